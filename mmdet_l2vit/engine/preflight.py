"""Checks and adjustments applied to a config before the runner is built.

- :func:`check_checkpoint_paths`: every local checkpoint the run will read
  (``init_cfg`` ``Pretrained`` entries, ``pretrained``, ``load_from``)
  exists, or one message lists the missing ones and how to get them.
- :func:`adapt_for_cpu_distributed`: mmengine 0.10.7 assumes CUDA for
  distributed runs (``nccl``, ``torch.cuda.set_device``, DDP with
  ``device_ids``, SyncBN). Without a GPU this switches to ``gloo``, wraps
  DDP without device ids, turns SyncBN into BN and initialises the process
  group with mmengine's ``init_dist`` (torchrun, Slurm or MPI environment),
  minus its CUDA device selection.
- :func:`check_amp_device`: ``--amp`` needs a GPU.

The errors a user can fix raised here (:class:`ConfigError` and its
subclasses, :class:`CheckpointNotFoundError`), with the data checks'
``DatasetError``, are what ``tools/train.py`` and ``tools/test.py`` print as
one ``error:`` line; anything else keeps its traceback.
"""
import contextlib
import os
import shutil
from typing import Any, Iterator, List, Tuple

import torch
from mmengine.config import Config
from mmengine.dist import init_dist, is_distributed
from mmengine.logging import print_log
from mmengine.utils.dl_utils import set_multi_processing

CHECKPOINT_HINT = (
    'The COCO/ADE20K configs start from the official ImageNet checkpoints: '
    'download them into checkpoints/ as listed in the README ("Pretrained '
    'checkpoints"), point the config at another path with --cfg-options '
    'model.backbone.init_cfg.checkpoint=PATH, or train from scratch with '
    '--cfg-options model.backbone.init_cfg=None.')


#: Where the demo classifiers are written (``tools/pretrain_demo.py``).
DEMO_PRETRAIN_DIR = 'work_dirs/demo_pretrain'


def _demo_pretrain_hint(path: str) -> str:
    """The command that writes a missing demo classifier, or ''."""
    name = os.path.basename(path)
    if (os.path.normpath(os.path.dirname(path)) !=
            os.path.normpath(DEMO_PRETRAIN_DIR)
            or not name.endswith('_cls.pth')):
        return ''
    return (f'{path} is a demo classifier: write it with `python '
            f'tools/pretrain_demo.py --model {name[:-len("_cls.pth")]}` '
            '(a few CPU minutes; `make demo` does this for l2vit_demo), or '
            'train from scratch with the *_scratch.py twin config.')


class ConfigError(ValueError):
    """A config, or a combination of command-line options and config, that
    cannot run (e.g. ``--auto-scale-lr`` without
    ``auto_scale_lr.base_batch_size``)."""


class DeviceError(ConfigError):
    """An option this machine cannot run (``--amp`` without a GPU)."""


class LauncherError(ConfigError):
    """A ``--launcher`` whose environment is incomplete on this machine."""


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint path in the config or on the command line is missing."""


def _is_remote(path: str) -> bool:
    return '://' in path


def iter_pretrained(node: Any, prefix: str = 'model'
                    ) -> Iterator[Tuple[str, str]]:
    """Yield ``(config_key, path)`` for every ``Pretrained`` init_cfg and
    string ``pretrained`` argument under a model config."""
    if isinstance(node, dict):
        if node.get('type') == 'Pretrained' and node.get('checkpoint'):
            yield f'{prefix}.checkpoint', str(node['checkpoint'])
        for key, value in node.items():
            if key == 'pretrained' and isinstance(value, str):
                yield f'{prefix}.pretrained', value
            else:
                yield from iter_pretrained(value, f'{prefix}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from iter_pretrained(value, f'{prefix}[{i}]')


def check_checkpoint_paths(cfg: Config, training: bool = True) -> None:
    """Raise :class:`CheckpointNotFoundError` for missing local files.

    Args:
        cfg (Config): The final config (after command-line options).
        training (bool): Also check the ``init_cfg`` checkpoints, which only
            training reads (testing loads the full model checkpoint).
    """
    missing: List[str] = []
    if training:
        missing += [
            f'{key} = {path!r}'
            for key, path in iter_pretrained(cfg.get('model', {}))
            if not _is_remote(path) and not os.path.isfile(path)
        ]
    load_from = cfg.get('load_from')
    if load_from and not _is_remote(load_from) and \
            not os.path.isfile(load_from):
        missing.append(f'load_from (or --resume / the test checkpoint) = '
                       f'{load_from!r}')
    if not missing:
        return
    if all(m.startswith('load_from') for m in missing):
        hint = ('Give the path of a checkpoint written by tools/train.py '
                '(e.g. work_dirs/<config>/iter_N.pth or epoch_N.pth).')
    else:
        demo_hints = [
            _demo_pretrain_hint(path)
            for _, path in iter_pretrained(cfg.get('model', {}))
            if not os.path.isfile(path)
        ]
        hint = ' '.join(h for h in demo_hints if h) or CHECKPOINT_HINT
    raise CheckpointNotFoundError(
        'checkpoint file(s) not found:\n  ' + '\n  '.join(missing) + '\n' +
        hint)


def _replace_syncbn(node: Any) -> int:
    """Turn every ``SyncBN`` / ``MMSyncBN`` norm config under ``node`` into
    ``BN``, in place.

    Returns:
        int: How many were replaced.
    """
    count = 0
    if isinstance(node, dict):
        if node.get('type') in ('SyncBN', 'MMSyncBN'):
            node['type'] = 'BN'
            count += 1
        for value in node.values():
            count += _replace_syncbn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _replace_syncbn(value)
    return count


def _use_gloo(env_cfg: dict) -> None:
    """Set ``env_cfg.dist_cfg.backend`` to ``'gloo'`` (NCCL needs CUDA)."""
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    backend = dist_cfg.get('backend', 'nccl')
    if backend != 'gloo':
        print_log(f'No GPU: using the gloo backend instead of {backend!r}.',
                  logger='current')
        dist_cfg['backend'] = 'gloo'


def _ddp_without_device_ids(cfg: Config) -> None:
    """Wrap the model in DDP without ``device_ids`` (CPU modules take
    none), keeping a configured wrapper's other settings."""
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


#: Variables ``srun`` sets that mmengine's Slurm set-up reads. Without
#: ``SLURM_LOCALID`` it derives the local rank from the GPU count, which is
#: 0 here.
SLURM_VARIABLES = ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST',
                   'SLURM_LOCALID')


def check_slurm_environment() -> None:
    """Raise :class:`LauncherError` where mmengine's Slurm set-up would fail
    obscurely on this machine.

    mmengine reads the ``SLURM_*`` variables and takes the master address
    from ``scontrol show hostname`` unless ``MASTER_ADDR`` is set. Without
    ``scontrol`` that command's output is the shell's "not found" message,
    which mmengine would use as the address.
    """
    missing = [name for name in SLURM_VARIABLES if name not in os.environ]
    if missing:
        raise LauncherError(
            f'--launcher slurm needs the variables srun sets; missing: '
            f'{", ".join(missing)}. Start the job with srun '
            '(tools/slurm_train.sh).')
    if 'MASTER_ADDR' not in os.environ and shutil.which('scontrol') is None:
        raise LauncherError(
            '--launcher slurm: `scontrol` is not on PATH, so the master '
            'node cannot be looked up; set MASTER_ADDR to the address of '
            'the first node of the job (and MASTER_PORT, default 29500).')


@contextlib.contextmanager
def _cuda_device_selection_disabled() -> Iterator[None]:
    """Make ``torch.cuda.set_device`` a no-op while the block runs.

    mmengine's ``init_dist`` pins every rank to GPU ``LOCAL_RANK``, which
    raises on a machine without one; the rest of its set-up (environment
    variables, ``init_process_group``) is what a CPU run needs.
    """
    set_device = torch.cuda.set_device
    torch.cuda.set_device = lambda device: None
    try:
        yield
    finally:
        torch.cuda.set_device = set_device


def init_cpu_process_group(launcher: str, env_cfg: dict) -> None:
    """Initialise ``torch.distributed`` without a GPU, through mmengine.

    The same steps, in the same order, as ``Runner.setup_env``
    (``set_multi_processing``, then ``init_dist`` with ``env_cfg.dist_cfg``),
    except that no CUDA device is selected. The runner then finds the group
    initialised and uses it.

    Args:
        launcher (str): ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
        env_cfg (dict): The config's ``env_cfg``; its ``dist_cfg`` names the
            backend (``'gloo'``) and e.g. a ``timeout``.
    """
    if is_distributed():
        return
    if launcher == 'slurm':
        check_slurm_environment()
    set_multi_processing(**env_cfg.get('mp_cfg', {}), distributed=True)
    with _cuda_device_selection_disabled():
        init_dist(launcher, **env_cfg.get('dist_cfg', {}))


def adapt_for_cpu_distributed(cfg: Config) -> bool:
    """Make a distributed config run without a GPU (see module doc).

    Args:
        cfg (Config): The final config; changed in place.

    Returns:
        bool: Whether anything was changed (False with a GPU or when not
        distributed).

    Raises:
        LauncherError: The launcher's environment is incomplete.
    """
    launcher = cfg.get('launcher', 'none')
    if launcher == 'none' or torch.cuda.is_available():
        return False
    env_cfg = cfg.setdefault('env_cfg', {})
    _use_gloo(env_cfg)
    _ddp_without_device_ids(cfg)
    replaced = _replace_syncbn(cfg.model)
    if replaced:
        print_log(f'No GPU: {replaced} SyncBN layer config(s) use BN '
                  '(SyncBN needs CUDA).', logger='current')
    init_cpu_process_group(launcher, env_cfg)
    return True


def check_amp_device() -> None:
    """Raise :class:`DeviceError` without CUDA: ``--amp`` needs it
    (mmengine's ``AmpOptimWrapper`` refuses the CPU)."""
    if not torch.cuda.is_available():
        raise DeviceError(
            '--amp needs a CUDA GPU (mmengine\'s AmpOptimWrapper does not '
            'run on the CPU); drop --amp to train in fp32 on the CPU.')
