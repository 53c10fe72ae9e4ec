"""Checks and adjustments applied to a config before the runner is built.

- :func:`check_checkpoint_paths`: every local checkpoint the run will read
  (``init_cfg`` ``Pretrained`` entries, ``pretrained``, ``load_from``)
  exists, or one message lists the missing ones and how to get them.
- :func:`adapt_for_cpu_distributed`: mmengine 0.10.7 assumes CUDA for
  distributed runs (``nccl``, ``torch.cuda.set_device``, DDP with
  ``device_ids``, SyncBN). Without a GPU this switches to ``gloo``, wraps
  DDP without device ids, turns SyncBN into BN and initialises the process
  group itself (torchrun or Slurm environment).
"""
import os
import subprocess
from typing import Any, Iterator, List, Tuple

import torch
from mmengine.config import Config
from mmengine.logging import print_log

CHECKPOINT_HINT = (
    'The COCO/ADE20K configs start from the official ImageNet checkpoints: '
    'download them into checkpoints/ as listed in the README ("Pretrained '
    'checkpoints"), point the config at another path with --cfg-options '
    'model.backbone.init_cfg.checkpoint=PATH, or train from scratch with '
    '--cfg-options model.backbone.init_cfg=None.')


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
    hint = CHECKPOINT_HINT if any(
        not m.startswith('load_from') for m in missing) else (
            'Give the path of a checkpoint written by tools/train.py (e.g. '
            'work_dirs/<config>/iter_N.pth or epoch_N.pth).')
    raise CheckpointNotFoundError(
        'checkpoint file(s) not found:\n  ' + '\n  '.join(missing) + '\n' +
        hint)


def _replace_syncbn(node: Any) -> int:
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


def _init_process_group(launcher: str, backend: str) -> None:
    """Initialise ``torch.distributed`` for a CPU run (mmengine's own
    initialisation calls ``torch.cuda.set_device``)."""
    if torch.distributed.is_initialized():
        return
    if launcher == 'slurm':
        node_list = os.environ['SLURM_NODELIST']
        addr = subprocess.getoutput(
            f'scontrol show hostname {node_list} | head -n1')
        os.environ.setdefault('MASTER_ADDR', addr)
        os.environ.setdefault('MASTER_PORT', '29500')
        os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
        os.environ['RANK'] = os.environ['SLURM_PROCID']
        os.environ['LOCAL_RANK'] = os.environ['SLURM_LOCALID']
    elif launcher != 'pytorch':
        raise ValueError(f'launcher {launcher!r} is not supported on CPU; '
                         'use torchrun (--launcher pytorch) or Slurm.')
    torch.distributed.init_process_group(backend=backend)


def adapt_for_cpu_distributed(cfg: Config) -> bool:
    """Make a distributed config run without a GPU (see module doc).

    Returns:
        bool: Whether anything was changed (False with a GPU or when not
        distributed).
    """
    launcher = cfg.get('launcher', 'none')
    if launcher == 'none' or torch.cuda.is_available():
        return False
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') != 'gloo':
        print_log(f'No GPU: using the gloo backend instead of '
                  f'{dist_cfg.get("backend", "nccl")!r}.', logger='current')
        dist_cfg['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None  # CPU modules take no device ids
    cfg.model_wrapper_cfg = wrapper
    replaced = _replace_syncbn(cfg.model)
    if replaced:
        print_log(f'No GPU: {replaced} SyncBN layer config(s) use BN '
                  '(SyncBN needs CUDA).', logger='current')
    _init_process_group(launcher, 'gloo')
    return True


def check_amp_device() -> None:
    """``--amp`` needs CUDA: mmengine's AmpOptimWrapper refuses the CPU."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            '--amp needs a CUDA GPU (mmengine\'s AmpOptimWrapper does not '
            'run on the CPU); drop --amp to train in fp32 on the CPU.')
