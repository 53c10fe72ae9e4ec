"""Safe reading of official classification checkpoints and strict loading.

The official L²ViT and InLine training scripts pickle more than tensors: an
``argparse.Namespace`` (L²ViT, under ``args``) or a ``yacs.config.CfgNode``
(InLine, under ``config``). ``torch.load(weights_only=True)`` refuses both,
and ``weights_only=False`` would run any code a file asks for. This module
reads them with torch's weights-only unpickler, allowing these two classes
only for the duration of the load (``torch.serialization.safe_globals``):
``Namespace`` itself, and ``collections.OrderedDict`` under the name
``yacs.config.CfgNode`` (torch fills only ``dict`` / ``OrderedDict`` /
``Counter`` item by item, so a ``dict`` subclass stand-in would be refused;
yacs need not be installed and none of its code runs). Anything else is
refused, naming the file, the class and the way out (``trust_pickle``).

Everything here is a pure function: the backbones call it from
``init_weights`` and ``tools/convert_checkpoint.py`` calls it offline.
"""
import argparse
import collections
import contextlib
import importlib.util
import logging
import os
import os.path as osp
import pickle
import re
import zipfile
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping,
                    NamedTuple, Optional, Sequence, Tuple, Union)

import torch
from mmengine.logging import print_log
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that pickles classes outside the safe allow-list."""


#: Classes the official checkpoints pickle besides what torch allows by
#: default, as entries of ``torch.serialization.safe_globals``.
OFFICIAL_SAFE_GLOBALS: List[Union[Callable, Tuple[Callable, str]]] = [
    argparse.Namespace,
    (collections.OrderedDict, 'yacs.config.CfgNode'),
]

TRUST_HINT = (
    'If you trust the file (you downloaded it from the official release), '
    'read it with full pickle: set `trust_pickle=True` in the backbone\'s '
    '`init_cfg`, or convert it once with `python tools/convert_checkpoint.py '
    'SRC DST --trust-pickle`, which writes a tensor-only file, and point '
    '`init_cfg.checkpoint` at DST.')

#: Errors of ``torch.load`` that mean the file itself is damaged.
_READ_ERRORS = (RuntimeError, EOFError, OSError, zipfile.BadZipFile,
                ValueError)

#: What torch's weights-only unpickler says when it refuses a construct
#: (rather than failing on bytes that are no pickle at all).
_REFUSAL_PATTERNS = ('Unsupported global', 'unsupported GLOBAL', 'Can only',
                     'Trying to call reduce', 'refusing getattr')


@contextlib.contextmanager
def official_safe_globals() -> Iterator[None]:
    """Allow :data:`OFFICIAL_SAFE_GLOBALS` inside the ``with`` block only.

    Entries that were already allowed (globally, by the user) are left out,
    so leaving the block does not remove them.
    """
    allowed = torch.serialization.get_safe_globals()
    extra = [g for g in OFFICIAL_SAFE_GLOBALS if g not in allowed]
    with torch.serialization.safe_globals(extra):
        yield


def allow_official_checkpoints() -> None:
    """Add :data:`OFFICIAL_SAFE_GLOBALS` to torch's weights-only allow-list
    for the whole process (idempotent).

    Called when the timm models are registered, so that timm's own loader
    (``timm.create_model(..., checkpoint_path=PATH)``, which reads with
    ``weights_only=True``) accepts official files: their ``args`` become an
    ``argparse.Namespace`` and their ``config`` an ``OrderedDict`` (yacs
    need not be installed; none of its code runs). Nothing else is allowed.
    """
    allowed = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals(
        [g for g in OFFICIAL_SAFE_GLOBALS if g not in allowed])


def read_checkpoint_file(path: str, trust_pickle: bool = False) -> Any:
    """Read a checkpoint file onto the CPU without running foreign code.

    Args:
        path (str): Path of the ``.pth`` file.
        trust_pickle (bool): Read with full pickle (only for files you
            trust). Default: False.

    Returns:
        Any: The unpickled object (usually a dict).

    Raises:
        FileNotFoundError: The path does not exist.
        UnsafeCheckpointError: The file needs classes outside the allow-list.
        CheckpointError: The file is truncated, corrupt or not a checkpoint.
    """
    path = _existing_file(path)
    if trust_pickle:
        return _read_trusted(path)
    try:
        with official_safe_globals():
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refused_or_corrupt(path, e) from None
    except _READ_ERRORS as e:
        raise _corrupt(path, e) from e


def _existing_file(path: str) -> str:
    """The expanded ``path``, after checking that it is a non-empty file."""
    path = osp.expanduser(str(path))
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'checkpoint file not found: {path!r}. Download the official '
            'ImageNet checkpoint (see README, "Pretrained checkpoints") and '
            'put it there, or fix `init_cfg.checkpoint`.')
    if osp.getsize(path) == 0:
        raise CheckpointError(f'checkpoint file {path!r} is empty (0 bytes); '
                              'download it again.')
    return path


def _refused_or_corrupt(path: str,
                        error: pickle.UnpicklingError) -> CheckpointError:
    """Turn a weights-only failure into a refusal that names the classes,
    or, when torch refused no construct, into a corrupt-file error."""
    detail = _unpickler_detail(str(error))
    wanted = _unsafe_globals(path) or re.findall(r'GLOBAL (\S+) ', detail)
    if not wanted and not any(p in detail for p in _REFUSAL_PATTERNS):
        return _corrupt(path, pickle.UnpicklingError(detail))
    what = (f'pickles `{"`, `".join(sorted(set(wanted)))}`' if wanted else
            f'needs more than tensors and plain types ({detail})')
    return UnsafeCheckpointError(
        f'{path}: the checkpoint {what}, which is not one of the classes the '
        'supported formats need, so it was not loaded (unpickling it could '
        f'run arbitrary code). {TRUST_HINT}')


def _unpickler_detail(message: str) -> str:
    """The reason in torch's long ``Weights only load failed`` message."""
    found = re.search(r'WeightsUnpickler error:\s*(.*?)\s*(?:\n\n|$)',
                      message, flags=re.S)
    return found.group(1).strip() if found else message.strip()


def _unsafe_globals(path: str) -> List[str]:
    """Globals of a zip checkpoint that the official allow-list lacks."""
    try:
        with official_safe_globals():
            return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (pickle.UnpicklingError, ) + _READ_ERRORS:
        return []  # legacy (non-zip) file: torch's message names the class


def _corrupt(path: str, error: BaseException) -> CheckpointError:
    """The error for a file that is damaged or not a checkpoint."""
    return CheckpointError(
        f'could not read checkpoint {path!r}: the file is truncated, corrupt '
        f'or not a PyTorch checkpoint ({type(error).__name__}: {error}). '
        'Download it again and compare its size with the release.')


class _YacsFreeUnpickler(pickle.Unpickler):
    """Full unpickler that reads yacs' ``CfgNode`` as an ``OrderedDict``.

    Used by :func:`read_checkpoint_file` with ``trust_pickle=True`` only
    when yacs is not installed; everything else resolves as in ``pickle``.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ('yacs.config', 'CfgNode'):
            return collections.OrderedDict
        return super().find_class(module, name)


class _YacsFreePickle:
    """The ``pickle_module`` for ``torch.load`` around the unpickler above."""

    Unpickler = _YacsFreeUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        """``pickle.load`` with the unpickler above (legacy format)."""
        return _YacsFreeUnpickler(file, **kwargs).load()


def _read_trusted(path: str) -> Any:
    """Read a trusted file with full pickle (``weights_only=False``)."""
    kwargs: Dict[str, Any] = {}
    if importlib.util.find_spec('yacs') is None:
        kwargs['pickle_module'] = _YacsFreePickle
    try:
        return torch.load(path, map_location='cpu', weights_only=False,
                          **kwargs)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(
            f'could not read checkpoint {path!r} with full pickle: it needs '
            f'a class that is not installed ({type(e).__name__}: {e}).'
        ) from e
    except (pickle.UnpicklingError, ) + _READ_ERRORS as e:
        raise _corrupt(path, e) from e


def extract_state_dict(checkpoint: Any,
                       key: Optional[str] = None,
                       prefix: Optional[str] = None
                       ) -> Tuple[Dict[str, torch.Tensor], str]:
    """Pick the model state dict out of a checkpoint.

    The default order follows the official loaders: ``state_dict`` (mmengine
    and converted files), then ``model`` (official training files; also for
    ``*-best-ema`` files, whose reported accuracy is that of ``model``), then
    the dict itself. A leading ``module.`` is stripped. Only the keys under
    ``prefix`` are kept, unprefixed; without a ``prefix``, the keys under
    ``backbone.`` when there are any (a full detector / segmentor file).

    Args:
        checkpoint (Any): What :func:`read_checkpoint_file` returned.
        key (str, optional): Take exactly this entry (e.g. ``'model_ema'``).
        prefix (str, optional): Keep only the keys under this prefix,
            stripped. Default: ``'backbone.'`` if any key has it.

    Returns:
        tuple[dict, str]: The state dict and a description of its source.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    if key is not None:
        if key not in checkpoint:
            raise CheckpointError(
                f'checkpoint has no entry {key!r}; it has '
                f'{sorted(map(str, checkpoint))}')
        state_dict, source = checkpoint[key], key
    elif 'state_dict' in checkpoint:
        state_dict, source = checkpoint['state_dict'], 'state_dict'
    elif 'model' in checkpoint:
        state_dict, source = checkpoint['model'], 'model'
    else:
        state_dict, source = checkpoint, '<root>'
    if not isinstance(state_dict, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(
            f'checkpoint entry {source!r} is not a state dict of tensors')
    state_dict = dict(state_dict)
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    if prefix is None and any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'
    if prefix:
        state_dict = {
            k[len(prefix):]: v
            for k, v in state_dict.items() if k.startswith(prefix)
        }
        source += f' ({prefix}*)'
    return state_dict, source


#: (family, keys that identify it). First match wins.
_FAMILY_MARKERS: Sequence[Tuple[str, Tuple[str, ...]]] = (
    ('L2ViT', ('downsample_layers.0.proj.proj.0.weight', )),
    ('InLinePVT', ('patch_embed1.proj.weight', 'block1.0.attn.kv.weight')),
    ('InLineSwin', ('layers.0.blocks.0.attn.residual.0.weight', )),
    ('Swin (official)', ('layers.0.blocks.0.attn.relative_position_index', )),
    ('Swin (mmdet/mmseg)', ('patch_embed.projection.weight', )),
    ('PVT', ('patch_embed1.proj.weight', )),
    ('ConvNeXt', ('downsample_layers.0.0.weight', )),
)


def detect_family(state_dict: Mapping[str, Any]) -> str:
    """Name the model family a state dict most likely comes from.

    Args:
        state_dict (Mapping): A (converted or official) state dict.

    Returns:
        str: E.g. ``'L2ViT'``, ``'InLinePVT'``, ``'InLineSwin'``, or
        ``'unknown'``.
    """
    for family, markers in _FAMILY_MARKERS:
        if all(m in state_dict for m in markers):
            return family
    return 'unknown'


class ConvertedStateDict(NamedTuple):
    """Result of converting an official state dict to a backbone layout."""
    state_dict: Dict[str, torch.Tensor]
    kept: List[str]
    dropped: List[str]
    created: List[str]


def match_any(key: str, patterns: Iterable[str]) -> bool:
    """Whether ``key`` equals a pattern or starts with a ``'prefix.'``."""
    return any(key == p or (p.endswith('.') and key.startswith(p))
               for p in patterns)


def _short_list(keys: Sequence[str], limit: int = 8) -> str:
    shown = ', '.join(keys[:limit])
    more = f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''
    return f'[{shown}{more}]'


def load_state_dict_strictly(module: nn.Module,
                             state_dict: Mapping[str, torch.Tensor],
                             source: str,
                             expected_family: str,
                             allowed_missing: Iterable[str] = (),
                             allowed_unexpected: Iterable[str] = (),
                             resized_on_load: Iterable[str] = (),
                             logger: Any = 'current') -> None:
    """Load a state dict, failing on anything not explicitly expected.

    Args:
        module (nn.Module): Target module.
        state_dict (Mapping): Converted state dict.
        source (str): Where it came from, for messages.
        expected_family (str): Family name for the wrong-model hint.
        allowed_missing (Iterable[str]): Keys (or ``'prefix.'`` patterns) the
            checkpoint may lack; they keep their initialisation.
        allowed_unexpected (Iterable[str]): Keys the model may lack.
        resized_on_load (Iterable[str]): Key suffixes whose tensors the
            module's load pre-hooks resize (e.g.
            ``'relative_position_bias_table'``): their shapes are checked by
            ``load_state_dict`` after the hooks, not here.
        logger: mmengine logger or name. Default: 'current'.

    Raises:
        CheckpointError: Naming missing, unexpected or mis-shaped keys.
    """
    resized_on_load = tuple(resized_on_load)
    allowed_missing = list(allowed_missing)
    allowed_unexpected = list(allowed_unexpected)
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    bad_missing = [k for k in missing if not match_any(k, allowed_missing)]
    bad_unexpected = [
        k for k in unexpected if not match_any(k, allowed_unexpected)
    ]
    mis_shaped = [
        f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
        for k, v in state_dict.items() if k in own and v.shape != own[k].shape
        and not k.endswith(resized_on_load)
    ]
    if bad_missing or bad_unexpected or mis_shaped:
        family = detect_family(state_dict)
        hint = ''
        if family not in (expected_family, 'unknown'):
            hint = (f' The checkpoint looks like a {family} model, not '
                    f'{expected_family}: use the checkpoint that matches the '
                    'backbone type.')
        elif mis_shaped:
            hint = (' The shapes suggest a different size of the same '
                    'model: check `arch` against the checkpoint.')
        parts = []
        if bad_missing:
            parts.append(f'{len(bad_missing)} missing keys '
                         f'{_short_list(bad_missing)}')
        if bad_unexpected:
            parts.append(f'{len(bad_unexpected)} unexpected keys '
                         f'{_short_list(bad_unexpected)}')
        if mis_shaped:
            parts.append(f'{len(mis_shaped)} mis-shaped keys '
                         f'{_short_list(mis_shaped, 4)}')
        raise CheckpointError(
            f'checkpoint {source} does not fit {type(module).__name__}: '
            + '; '.join(parts) + '.' + hint)
    state_dict = {k: v for k, v in state_dict.items() if k in own}
    try:
        module.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # a resize the load pre-hooks could not do
        raise CheckpointError(f'checkpoint {source} does not fit '
                              f'{type(module).__name__}: {e}') from None
    print_log(
        f'{type(module).__name__}: loaded {len(state_dict)} tensors from '
        f'{source}; kept at init (expected): {_short_list(missing)}; '
        f'ignored (expected): {_short_list(unexpected)}',
        logger=logger, level=logging.INFO)


def save_tensor_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str,
                           meta: Mapping[str, Any]) -> None:
    """Write ``{'state_dict', 'meta'}`` atomically (tensors and plain types).

    The file is written next to ``path`` and renamed into place, so an
    interrupted write never leaves a truncated checkpoint at ``path``.
    """
    path = osp.expanduser(path)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        torch.save({'state_dict': dict(state_dict), 'meta': dict(meta)}, tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
