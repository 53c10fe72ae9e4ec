"""The classification models in timm's registry.

``import mmdet_l2vit`` registers ``l2vit_{tiny,small,base,base_384}``,
``inline_pvt_{tiny,small,medium,large}``, ``inline_swin_{tiny,small,base}``
and the reduced demo models ``l2vit_demo``, ``inline_pvt_demo``,
``inline_swin_demo`` (the embedded-data pretraining, ``tools/pretrain_demo.py``)::

    model = timm.create_model('l2vit_tiny', pretrained=True,
                              pretrained_cfg_overlay=dict(file=PATH))
    model = timm.create_model('inline_swin_tiny', checkpoint_path=PATH)
    encoder = timm.create_model('l2vit_tiny', features_only=True,
                                out_indices=(1, 2, 3))

Official files pickle an ``argparse.Namespace`` (L²ViT) or a yacs
``CfgNode`` (InLine), which timm's weights-only reader refuses. Two ways in,
neither needing ``weights_only=False``:

- ``pretrained_cfg_overlay=dict(file=PATH)``: the model's
  ``load_pretrained`` (timm's ``custom_load`` hook, switched on here for
  every file or URL source) reads the file with the package's safe reader
  and loads it strictly, with its messages; the entry is ``model`` (as the
  official loaders), or ``checkpoint_key='model_ema'`` in the overlay.
- ``checkpoint_path=PATH``: timm's own loader, whose weights-only reads
  accept the two classes once this module is imported
  (:func:`~mmdet_l2vit.checkpoint.allow_official_checkpoints`); timm's
  convention applies: ``model_ema`` when the file has it
  (``timm.models.load_checkpoint(model, PATH, use_ema=False)`` for
  ``model``).

``features_only=True`` wraps the model in timm's ``FeatureGetterNet``: the
stage maps of ``out_indices`` (NCHW, strides 4-32) with ``feature_info``.
"""
from typing import Any, Callable, Dict, Union

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models import register_model
from torch import nn

from ...checkpoint import allow_official_checkpoints
from .classifiers import (InLinePVTClassifier, InLineSwinClassifier,
                          L2ViTClassifier)

#: Reduced architectures of the demo (embedded synthetic data): the widths
#: and depths of the demo detectors' and segmentors' backbones.
DEMO_ARCHS: Dict[str, Dict[str, Any]] = {
    'l2vit_demo': dict(embed_dims=[32, 64, 128, 256], depths=[2, 2, 2, 2],
                       num_heads=[1, 2, 4, 8]),
    'inline_pvt_demo': dict(embed_dims=[32, 64, 128, 256],
                            depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
                            mlp_ratios=[8, 8, 4, 4]),
    'inline_swin_demo': dict(embed_dims=32, depths=[2, 2, 2, 2],
                             num_heads=[1, 2, 4, 8], attn_types='IIIS'),
}
#: Image size of the demo classification crops.
DEMO_IMG_SIZE = 32
#: The pretrained-cfg keys that name a weight source.
_SOURCES = ('file', 'url', 'hf_hub_id')

allow_official_checkpoints()


def _cfg(input_size: int = 224, num_classes: int = 1000,
         **kwargs: Any) -> Dict[str, Any]:
    return dict(url='', num_classes=num_classes,
                input_size=(3, input_size, input_size),
                pool_size=(input_size // 32, input_size // 32),
                crop_pct=0.9 if input_size == 224 else 1.0,
                interpolation='bicubic', mean=IMAGENET_DEFAULT_MEAN,
                std=IMAGENET_DEFAULT_STD, classifier='head',
                license='mit', **kwargs)


default_cfgs = generate_default_cfgs({
    'l2vit_tiny.in1k': _cfg(first_conv='downsample_layers.0.proj.proj.0'),
    'l2vit_small.in1k': _cfg(first_conv='downsample_layers.0.proj.proj.0'),
    'l2vit_base.in1k': _cfg(first_conv='downsample_layers.0.proj.proj.0'),
    'l2vit_base_384.in22k_ft_in1k': _cfg(
        384, first_conv='downsample_layers.0.proj.proj.0'),
    'l2vit_demo.shapes': _cfg(DEMO_IMG_SIZE, num_classes=5,
                              first_conv='downsample_layers.0.proj.proj.0'),
    'inline_pvt_tiny.in1k': _cfg(first_conv='patch_embed1.proj'),
    'inline_pvt_small.in1k': _cfg(first_conv='patch_embed1.proj'),
    'inline_pvt_medium.in1k': _cfg(first_conv='patch_embed1.proj'),
    'inline_pvt_large.in1k': _cfg(first_conv='patch_embed1.proj'),
    'inline_pvt_demo.shapes': _cfg(DEMO_IMG_SIZE, num_classes=5,
                                   first_conv='patch_embed1.proj'),
    'inline_swin_tiny.in1k': _cfg(first_conv='patch_embed.proj'),
    'inline_swin_small.in1k': _cfg(first_conv='patch_embed.proj'),
    'inline_swin_base.in1k': _cfg(first_conv='patch_embed.proj'),
    'inline_swin_demo.shapes': _cfg(DEMO_IMG_SIZE, num_classes=5,
                                    first_conv='patch_embed.proj'),
})


def _create(variant: str, model_cls: Callable[..., nn.Module],
            default_arch: Union[str, Dict[str, Any]], pretrained: bool,
            **kwargs: Any) -> nn.Module:
    """Build ``variant`` through timm's builder.

    ``default_arch`` is the variant's arch (a caller's ``arch=`` wins); a
    file or URL source in ``pretrained_cfg_overlay`` loads through the
    model's ``load_pretrained`` (safe reader), its ``checkpoint_key``
    choosing the entry.
    """
    overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {})
    checkpoint_key = overlay.pop('checkpoint_key', None)
    if any(overlay.get(k) for k in _SOURCES):
        overlay.setdefault('custom_load', True)
    kwargs.setdefault('arch', default_arch)
    return build_model_with_cfg(
        model_cls, variant, pretrained, pretrained_cfg_overlay=overlay,
        feature_cfg=dict(feature_cls='getter', out_indices=(0, 1, 2, 3)),
        checkpoint_key=checkpoint_key, **kwargs)


@register_model
def l2vit_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """L²ViT-T (official ImageNet-1k classifier)."""
    return _create('l2vit_tiny', L2ViTClassifier, 'tiny', pretrained,
                   **kwargs)


@register_model
def l2vit_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """L²ViT-S."""
    return _create('l2vit_small', L2ViTClassifier, 'small', pretrained,
                   **kwargs)


@register_model
def l2vit_base(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """L²ViT-B."""
    return _create('l2vit_base', L2ViTClassifier, 'base', pretrained,
                   **kwargs)


@register_model
def l2vit_base_384(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """L²ViT-B at 384 (window 12; the 22k-pretrained 1k fine-tune)."""
    return _create('l2vit_base_384', L2ViTClassifier, 'base-384',
                   pretrained, **kwargs)


@register_model
def l2vit_demo(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Reduced L²ViT of the demo (5 shape classes, 32 px crops)."""
    kwargs.setdefault('num_classes', 5)
    return _create('l2vit_demo', L2ViTClassifier, DEMO_ARCHS['l2vit_demo'],
                   pretrained, **kwargs)


@register_model
def inline_pvt_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """InLine-PVT-T (official ImageNet-1k classifier)."""
    return _create('inline_pvt_tiny', InLinePVTClassifier, 'tiny',
                   pretrained, **kwargs)


@register_model
def inline_pvt_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """InLine-PVT-S."""
    return _create('inline_pvt_small', InLinePVTClassifier, 'small',
                   pretrained, **kwargs)


@register_model
def inline_pvt_medium(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """InLine-PVT-M."""
    return _create('inline_pvt_medium', InLinePVTClassifier, 'medium',
                   pretrained, **kwargs)


@register_model
def inline_pvt_large(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """InLine-PVT-L."""
    return _create('inline_pvt_large', InLinePVTClassifier, 'large',
                   pretrained, **kwargs)


@register_model
def inline_pvt_demo(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Reduced InLine-PVT of the demo (5 shape classes, 32 px crops)."""
    kwargs.setdefault('num_classes', 5)
    kwargs.setdefault('img_size', DEMO_IMG_SIZE)
    return _create('inline_pvt_demo', InLinePVTClassifier,
                   DEMO_ARCHS['inline_pvt_demo'], pretrained, **kwargs)


@register_model
def inline_swin_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """InLine-Swin-T (official ImageNet-1k classifier)."""
    return _create('inline_swin_tiny', InLineSwinClassifier, 'tiny',
                   pretrained, **kwargs)


@register_model
def inline_swin_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """InLine-Swin-S."""
    return _create('inline_swin_small', InLineSwinClassifier, 'small',
                   pretrained, **kwargs)


@register_model
def inline_swin_base(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """InLine-Swin-B."""
    return _create('inline_swin_base', InLineSwinClassifier, 'base',
                   pretrained, **kwargs)


@register_model
def inline_swin_demo(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Reduced InLine-Swin of the demo (5 shape classes, 32 px crops)."""
    kwargs.setdefault('num_classes', 5)
    kwargs.setdefault('img_size', DEMO_IMG_SIZE)
    return _create('inline_swin_demo', InLineSwinClassifier,
                   DEMO_ARCHS['inline_swin_demo'], pretrained, **kwargs)
