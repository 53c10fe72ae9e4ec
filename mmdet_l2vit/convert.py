"""Offline conversion of official classification checkpoints.

The same conversion the backbones run in ``init_weights``, done once and
written as a tensor-only file (``{'state_dict', 'meta'}``) that loads with
``torch.load(weights_only=True)``.
"""
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Type

from .checkpoint import (CheckpointError, detect_family, extract_state_dict,
                         load_state_dict_strictly, read_checkpoint_file,
                         save_tensor_checkpoint)
from .models.backbones import InLinePVT, InLineSwin, L2ViT
from .models.backbones.base import DenseBackbone

#: The backbones that convert official checkpoints, by family name: each
#: class's ``family`` attribute, as :func:`detect_family` names it.
BACKBONE_CLASSES: Dict[str, Type[DenseBackbone]] = {
    'L2ViT': L2ViT,
    'InLinePVT': InLinePVT,
    'InLineSwin': InLineSwin,
}


def backbone_classes() -> Dict[str, Type[DenseBackbone]]:
    """Backbone classes of this package by checkpoint family name.

    Returns:
        dict[str, type]: A copy of :data:`BACKBONE_CLASSES`, e.g.
        ``{'L2ViT': L2ViT, ...}``.
    """
    return dict(BACKBONE_CLASSES)


class ConversionSummary(NamedTuple):
    """What :func:`convert_checkpoint` did."""
    family: str
    source: str
    arch: Dict[str, Any]
    kept: List[str]
    dropped: List[str]
    created: List[str]


def convert_checkpoint(src: str,
                       dst: str,
                       model_type: Optional[str] = None,
                       checkpoint_key: Optional[str] = None,
                       out_indices: Sequence[int] = (0, 1, 2, 3),
                       trust_pickle: bool = False) -> ConversionSummary:
    """Convert an official classification checkpoint to a backbone file.

    Args:
        src (str): Official checkpoint as released.
        dst (str): Output path (written atomically, tensors only).
        model_type (str, optional): Backbone type (``'L2ViT'``,
            ``'InLinePVT'``, ``'InLineSwin'``); detected from the keys when
            omitted.
        checkpoint_key (str, optional): Entry to convert, e.g.
            ``'model_ema'``. Default: ``model`` (as the official loaders).
        out_indices (Sequence[int]): Output norms to create.
        trust_pickle (bool): Read ``src`` with full pickle.

    Returns:
        ConversionSummary: Kept, dropped and created keys.
    """
    classes = backbone_classes()
    raw = read_checkpoint_file(src, trust_pickle=trust_pickle)
    state_dict, source = extract_state_dict(raw, checkpoint_key)
    family = model_type or detect_family(state_dict)
    if family not in classes:
        raise CheckpointError(
            f'{src}: cannot convert a {family!r} checkpoint; supported '
            f'types: {sorted(classes)} (pass --type to name one).')
    cls = classes[family]
    arch = cls.infer_arch_from_state_dict(state_dict)
    model = cls(arch=arch, out_indices=tuple(out_indices))
    converted = model.convert_official_state_dict(state_dict)
    load_state_dict_strictly(model, converted.state_dict, source=src,
                             expected_family=family,
                             allowed_unexpected=model.optional_keys(),
                             resized_on_load=model.resized_on_load)
    meta = dict(type=family, arch=arch, source=str(src), entry=source,
                out_indices=list(out_indices), dropped=converted.dropped,
                created=converted.created,
                converter='mmdet_l2vit tools/convert_checkpoint.py')
    save_tensor_checkpoint(converted.state_dict, dst, meta)
    return ConversionSummary(family, source, arch, converted.kept,
                             converted.dropped, converted.created)
