"""Backbones and images for the analysis tools (``tools/analysis/``).

A backbone comes from a model config (its ``model.backbone``; any mmdet /
mmseg backbone, ``pkg::path`` names a config shipped with a toolbox, e.g.
``mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py``) or from a type and
arch (``--type L2ViT --arch tiny``; this package's types need no toolbox).
Weights: ``checkpoint`` loads a file (this package's backbones read
official classification checkpoints, converted files and detector /
segmentor checkpoints; other backbones a toolbox checkpoint, whose
``backbone.`` keys are taken, or what their own ``Pretrained`` init reads);
without one the backbone is initialised from scratch (random weights) and
any ``init_cfg`` of the config is ignored, so nothing is downloaded.
"""
import argparse
import importlib
import os.path as osp
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from mmengine.config import Config, DictAction
from torch import nn

from ..checkpoint import extract_state_dict, read_checkpoint_file
from ..convert import backbone_classes
from ..models.backbones.base import DenseBackbone
from ..visualization.contact_sheet import choose_evenly, list_pictures

#: The toolboxes' default image normalisation (RGB), as in their configs.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
#: The demo data's held-out images (``tools/generate_demo_data.py``).
DEMO_IMAGES = 'data/demo/coco/val2017'


class Normalisation(NamedTuple):
    """How a model expects its images: channel order and statistics."""
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    rgb: bool = True


class BackboneSpec(NamedTuple):
    """A backbone built for analysis, with what describes it."""
    model: nn.Module
    label: str
    normalisation: Normalisation


def resolve_config_path(path: str) -> str:
    """``pkg::rel/path.py`` -> the file in the installed package's
    ``.mim/configs``; other paths unchanged."""
    if '::' not in path:
        return path
    package, relative = path.split('::', 1)
    module = importlib.import_module(package)
    root = osp.dirname(module.__file__)
    for candidate in (osp.join(root, '.mim', 'configs', relative),
                      osp.join(root, 'configs', relative)):
        if osp.isfile(candidate):
            return candidate
    raise FileNotFoundError(f'{path}: no such config in {package} '
                            f'({root}/.mim/configs).')


def _toolbox_models(scope: str):
    """The ``MODELS`` registry of a toolbox scope, its default scope set."""
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    return importlib.import_module(f'{scope}.registry').MODELS


def _normalisation_of(cfg: Config) -> Normalisation:
    preprocessor = cfg.get('model', {}).get('data_preprocessor') or {}
    if 'mean' not in preprocessor:
        return Normalisation()
    return Normalisation(tuple(preprocessor['mean']),
                         tuple(preprocessor['std']),
                         bool(preprocessor.get('bgr_to_rgb', False)))


def backbone_config(config: str) -> Tuple[Dict[str, Any], str,
                                          Normalisation]:
    """The backbone of a model config, its scope and image normalisation.

    Args:
        config (str): A config file (or ``pkg::path``).

    Returns:
        tuple: The backbone's config dict, the default scope (``'mmdet'``
        unless the config says otherwise) and the normalisation of the
        config's ``data_preprocessor``.
    """
    cfg = Config.fromfile(resolve_config_path(config))
    model = cfg.get('model')
    if model is None:
        raise ValueError(f'{config}: the config has no `model`.')
    backbone = model.get('backbone', model)
    return (backbone.to_dict() if hasattr(backbone, 'to_dict') else
            dict(backbone), cfg.get('default_scope', 'mmdet'),
            _normalisation_of(cfg))


def _toolbox_backbone_state(path: str) -> Optional[Dict[str, Any]]:
    """The ``backbone.`` weights of a toolbox checkpoint (None if it has
    none, e.g. a classification checkpoint)."""
    from mmengine.runner import CheckpointLoader
    checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    state = checkpoint.get('state_dict', checkpoint)
    prefix = 'backbone.'
    found = {k[len(prefix):]: v for k, v in state.items()
             if k.startswith(prefix)}
    return found or None


def arch_of_checkpoint(cls: type, checkpoint: str) -> Dict[str, Any]:
    """The ``arch`` of one of this package's backbone classes that an
    official-layout (or detector) checkpoint was saved from."""
    state_dict, _ = extract_state_dict(read_checkpoint_file(checkpoint))
    return cls.infer_arch_from_state_dict(state_dict)


def initialise(model: nn.Module, checkpoint: Optional[str]) -> nn.Module:
    """Random init (``checkpoint`` None) or load ``checkpoint``.

    Args:
        model (nn.Module): Built with ``init_cfg=None``.
        checkpoint (str, optional): A checkpoint file.

    Returns:
        nn.Module: The model, in eval mode.
    """
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint} not found.')
    if checkpoint is None or isinstance(model, DenseBackbone):
        if checkpoint is not None:
            model.init_cfg = dict(type='Pretrained', checkpoint=checkpoint)
        model.init_weights()
    else:
        state = _toolbox_backbone_state(checkpoint)
        if state is None:
            model.init_cfg = dict(type='Pretrained', checkpoint=checkpoint)
            model.init_weights()
        else:
            model.load_state_dict(state, strict=True)
    model.eval()  # (some toolbox backbones return None from train())
    return model


def build_backbone(config: Optional[str] = None,
                   type: Optional[str] = None,
                   arch: Optional[str] = None,
                   checkpoint: Optional[str] = None,
                   backbone_args: Optional[Dict[str, Any]] = None,
                   scope: str = 'mmdet') -> BackboneSpec:
    """Build a backbone for analysis (see the module docstring).

    Args:
        config (str, optional): A model config.
        type (str, optional): A backbone type (this package's, or any in
            the toolbox of ``scope``), instead of ``config``.
        arch (str, optional): ``arch`` of ``type``; for this package's
            types, default: the arch of ``checkpoint`` (else the class
            default).
        checkpoint (str, optional): Weights; random init without.
        backbone_args (dict, optional): Backbone keyword arguments that
            override the config's (e.g. ablation switches).
        scope (str): Toolbox of a ``type`` not of this package.
            Default: 'mmdet'.

    Returns:
        BackboneSpec: The eval-mode backbone, a label, the normalisation.
    """
    if (config is None) == (type is None):
        raise ValueError('give either a config or a backbone type.')
    normalisation = Normalisation()
    if config is not None:
        cfg, scope, normalisation = backbone_config(config)
        label = osp.splitext(osp.basename(config))[0]
    else:
        cfg = dict(type=type) if arch is None else dict(type=type, arch=arch)
        label = type if arch is None else f'{type}-{arch}'
    cfg.update(backbone_args or {})
    cfg['init_cfg'] = None
    ours = backbone_classes()
    name = cfg.pop('type')
    if name in ours:
        if 'arch' not in cfg and checkpoint is not None:
            cfg['arch'] = arch_of_checkpoint(ours[name], checkpoint)
        model = ours[name](**cfg)
    else:
        model = _toolbox_models(scope).build(dict(cfg, type=name))
    if checkpoint is not None:
        label += f' ({osp.basename(checkpoint)})'
    return BackboneSpec(initialise(model, checkpoint), label, normalisation)


def add_backbone_arguments(parser: argparse.ArgumentParser,
                           checkpoints: bool = False) -> None:
    """The model arguments the analysis tools share."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--config', help='model config (its backbone is '
                        'used); pkg::path for a toolbox config, e.g. '
                        'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py')
    source.add_argument('--type', help='backbone type instead of a config, '
                        'e.g. L2ViT, InLinePVT, InLineSwin')
    parser.add_argument('--arch', help="arch of --type, e.g. 'tiny'")
    parser.add_argument(
        '--checkpoint', nargs='+' if checkpoints else None,
        help='weights: an official classification checkpoint, a converted '
        'one or a detector/segmentor checkpoint (default: random init)' +
        ('; several: one run each' if checkpoints else ''))
    parser.add_argument(
        '--backbone-args', nargs='+', action=DictAction, default={},
        help='backbone arguments as key=value, e.g. denominator_floor=None')
    parser.add_argument('--scope', default='mmdet',
                        help='toolbox of a --type not of this package')


def backbone_from_args(args: argparse.Namespace,
                       checkpoint: Optional[str] = None) -> BackboneSpec:
    """:func:`build_backbone` from :func:`add_backbone_arguments`."""
    return build_backbone(args.config, args.type, args.arch, checkpoint,
                          args.backbone_args, args.scope)


def image_paths(sources: Sequence[str], limit: Optional[int] = None
                ) -> List[str]:
    """Image files from files and folders (a folder: its pictures sorted by
    name, ``limit`` of them evenly spaced)."""
    paths: List[str] = []
    for source in sources:
        if osp.isdir(source):
            found = list_pictures(source)
            paths += choose_evenly(found, limit) if limit and found else found
        elif osp.isfile(source):
            paths.append(source)
        else:
            hint = (' (python tools/generate_demo_data.py writes it)'
                    if source == DEMO_IMAGES else '')
            raise FileNotFoundError(f'{source}: no such image or folder'
                                    f'{hint}.')
    if not paths:
        raise FileNotFoundError(f'no images in {list(sources)}.')
    return paths[:limit] if limit else paths


def load_image(path: str, normalisation: Normalisation = Normalisation(),
               size: Optional[Tuple[int, int]] = None
               ) -> Tuple[torch.Tensor, np.ndarray]:
    """Read an image for a backbone.

    Args:
        path (str): Image file.
        normalisation (Normalisation): The model's expectations.
        size (tuple[int, int], optional): Resize to (H, W) (bilinear).

    Returns:
        tuple: The (1, 3, H, W) float32 input and the RGB uint8 picture
        (H, W, 3) it shows.
    """
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f'{path}: not a readable image.')
    if size is not None:
        bgr = cv2.resize(bgr, (size[1], size[0]),
                         interpolation=cv2.INTER_LINEAR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    pixels = (rgb if normalisation.rgb else bgr).astype(np.float32)
    pixels = (pixels - np.array(normalisation.mean, np.float32)) / np.array(
        normalisation.std, np.float32)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()
    return tensor, rgb
