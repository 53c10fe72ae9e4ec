"""Building the backbones through mmdet's and mmseg's registries."""
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from conftest import require_toolbox

R1_ARCH = dict(embed_dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
               num_heads=[1, 2, 4, 8])


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_build_from_config_file_with_custom_imports(tmp_path, scope):
    require_toolbox(f'{scope}.models')
    config = tmp_path / f'{scope}_l2vit.py'
    config.write_text(textwrap.dedent(f"""
        custom_imports = dict(imports=['mmdet_l2vit'],
                              allow_failed_imports=False)
        default_scope = '{scope}'
        model = dict(type='L2ViT', arch={R1_ARCH!r}, out_indices=(1, 2, 3),
                     drop_path_rate=0.2)
    """))
    cfg = Config.fromfile(str(config))
    init_default_scope(cfg.default_scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(cfg.model)
    assert type(model).__name__ == 'L2ViT'
    assert model.out_indices == (1, 2, 3)
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 8, 12), (1, 64, 4, 6),
                                              (1, 128, 2, 3)]


def test_same_class_in_both_registries():
    require_toolbox('mmdet.models')
    require_toolbox('mmseg.models')
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS

    import mmdet_l2vit
    assert DET_MODELS.get('L2ViT') is SEG_MODELS.get('L2ViT') is \
        mmdet_l2vit.L2ViT


def test_conversion_table_names_each_family():
    from mmdet_l2vit.convert import backbone_classes
    from mmdet_l2vit.models.backbones import InLinePVT, InLineSwin, L2ViT
    classes = backbone_classes()
    assert classes == {'L2ViT': L2ViT, 'InLinePVT': InLinePVT,
                       'InLineSwin': InLineSwin}
    assert all(cls.family == name for name, cls in classes.items())
