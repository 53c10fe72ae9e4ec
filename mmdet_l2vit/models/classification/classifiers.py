"""The official classification models of the three families.

Each is its family's backbone class (stem, stages, blocks, initialisation)
with :class:`~.base.ClassifierMixin` in front, so the block code exists once.
Build them through timm (``timm.create_model('l2vit_tiny')``, see
:mod:`.timm_models`) or directly.
"""
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from timm.layers import to_2tuple

from ..backbones import InLinePVT, InLineSwin, L2ViT
from ..layers.swin_window_attention import (SwinWindowAttention,
                                            shifted_window_mask)
from .base import ClassifierMixin

Arch = Union[str, Dict[str, Any]]


class L2ViTClassifier(ClassifierMixin, L2ViT):
    """The official L²ViT image classifier: :class:`L2ViT` stages, then
    LayerNorm ``norm`` on every token, mean over tokens, ``head``.

    Args:
        arch (str | dict): As :class:`L2ViT`. Default: 'tiny'.
        num_classes (int): Classes of ``head`` (0: no head). Default: 1000.
        in_chans (int): Image channels. Default: 3.
        global_pool (str): ``'avg'`` (official) or ``''`` (tokens out).
        drop_rate (float): Dropout before ``head``. Default: 0.
        drop_path_rate (float): Stochastic depth rate. Default: 0.1.
        checkpoint_key (str, optional): Entry :meth:`load_pretrained` takes
            by default (``'model'`` or ``'model_ema'``). Default: None
            (``model``).
        **kwargs: Other :class:`L2ViT` arguments (``with_cp``,
            ``inference``, ...).
    """

    def __init__(self, arch: Arch = 'tiny', num_classes: int = 1000,
                 in_chans: int = 3, global_pool: str = 'avg',
                 drop_rate: float = 0., drop_path_rate: float = 0.1,
                 checkpoint_key: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(arch=arch, in_channels=in_chans,
                         drop_path_rate=drop_path_rate, out_indices=(3, ),
                         **kwargs)
        self._build_classifier(num_classes, global_pool, drop_rate,
                               checkpoint_key)


class InLinePVTClassifier(ClassifierMixin, InLinePVT):
    """The official InLine-PVT image classifier: :class:`InLinePVT` stages,
    mean over the last stage's tokens, ``head`` (no final norm).

    Args:
        arch (str | dict): As :class:`InLinePVT`. Default: 'tiny'.
        img_size (int | tuple[int]): Training image size; the position
            embeddings are stored for it (other sizes are interpolated).
            Default: 224.
        num_classes, in_chans, global_pool, drop_rate, drop_path_rate,
            checkpoint_key: as :class:`L2ViTClassifier`.
        **kwargs: Other :class:`InLinePVT` arguments.
    """

    final_norm = False

    def __init__(self, arch: Arch = 'tiny',
                 img_size: Union[int, Sequence[int]] = 224,
                 num_classes: int = 1000, in_chans: int = 3,
                 global_pool: str = 'avg', drop_rate: float = 0.,
                 drop_path_rate: float = 0.1,
                 checkpoint_key: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(arch=arch, in_channels=in_chans,
                         pretrain_img_size=img_size,
                         drop_path_rate=drop_path_rate, out_indices=(3, ),
                         **kwargs)
        self._build_classifier(num_classes, global_pool, drop_rate,
                               checkpoint_key)


class InLineSwinClassifier(ClassifierMixin, InLineSwin):
    """The official InLine-Swin image classifier: :class:`InLineSwin`
    stages, LayerNorm ``norm`` on every token, mean, ``head``.

    Its state dict also holds the derived buffers the official model stores:
    each softmax block's ``attn.relative_position_index`` and, in blocks that
    shift at ``img_size``, ``attn_mask`` (recomputed at runtime for other
    sizes, as in the backbone; the stored copy is what the official model
    saves for its nominal size).

    Args:
        arch (str | dict): As :class:`InLineSwin`. Default: 'tiny'.
        img_size (int | tuple[int]): The nominal image size, which decides
            which blocks store an ``attn_mask``. Default: 224.
        num_classes, in_chans, global_pool, drop_rate, drop_path_rate,
            checkpoint_key: as :class:`L2ViTClassifier`.
        **kwargs: Other :class:`InLineSwin` arguments.
    """

    def __init__(self, arch: Arch = 'tiny',
                 img_size: Union[int, Sequence[int]] = 224,
                 num_classes: int = 1000, in_chans: int = 3,
                 global_pool: str = 'avg', drop_rate: float = 0.,
                 drop_path_rate: float = 0.1,
                 checkpoint_key: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(arch=arch, in_channels=in_chans,
                         drop_path_rate=drop_path_rate, out_indices=(3, ),
                         **kwargs)
        self.img_size: Tuple[int, int] = to_2tuple(img_size)
        self._add_official_buffers()
        self._build_classifier(num_classes, global_pool, drop_rate,
                               checkpoint_key)

    def _add_official_buffers(self) -> None:
        height, width = self.img_size[0] // 4, self.img_size[1] // 4
        for layer in self.layers:
            for block in layer.blocks:
                attn = block.attn
                if not isinstance(attn, SwinWindowAttention):
                    continue
                attn.keep_index_in_state_dict()
                shift = attn.effective_shift(height, width)
                if shift:
                    w = attn.window_size
                    block.register_buffer(
                        'attn_mask',
                        shifted_window_mask(-(-height // w) * w,
                                            -(-width // w) * w, w, shift))
            height, width = -(-height // 2), -(-width // 2)


#: The classifier of each backbone family (``family`` names).
CLASSIFIER_CLASSES: Dict[str, type] = {
    cls.family: cls
    for cls in (L2ViTClassifier, InLinePVTClassifier, InLineSwinClassifier)
}

