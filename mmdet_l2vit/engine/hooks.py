"""Runner hooks: exact resumption and per-rank step records.

Both are registered into mmdet's and mmseg's ``HOOKS`` (and work with any
mmengine runner):

- :class:`RNGStateHook` makes ``--resume`` continue the random streams of
  an interrupted run, so the resumed losses equal those of a run that was
  never stopped (mmengine alone re-seeds, which replays the first
  iterations' random draws: RPN/RoI sampling, drop path, ...).
- :class:`StepRecordHook` appends every training step's losses to one JSON
  Lines file per rank (mmengine logs smoothed losses, on rank 0 only).
"""
import json
import math
import os
import os.path as osp
import random
from typing import Any, Dict, Optional

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook

from ..registry import register_into_toolboxes

CHECKPOINT_KEY = 'rng_state'


def get_rng_state() -> Dict[str, Any]:
    """The states of torch (CPU and CUDA), numpy and python ``random``,
    as tensors and plain Python values (safe to unpickle)."""
    np_state = np.random.get_state()
    state = dict(
        torch=torch.get_rng_state(),
        numpy=dict(keys=torch.from_numpy(np_state[1].astype(np.int64)),
                   pos=int(np_state[2]), has_gauss=int(np_state[3]),
                   cached_gaussian=float(np_state[4])),
        python=random.getstate())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any], numpy_and_python: bool = True
                  ) -> None:
    """Restore a state from :func:`get_rng_state`."""
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    if numpy_and_python:
        np_state = state['numpy']
        np.random.set_state(
            ('MT19937', np_state['keys'].numpy().astype(np.uint32),
             np_state['pos'], np_state['has_gauss'],
             np_state['cached_gaussian']))
        python = state['python']
        random.setstate((python[0], tuple(python[1]), python[2]))


@register_into_toolboxes('HOOKS')
class RNGStateHook(Hook):
    """Save the random-number states in every checkpoint and restore them
    when training resumes.

    A checkpoint written after iteration ``k - 1`` stores the states with
    which iteration ``k`` starts; on resume they are restored right before
    iteration ``k`` runs (after mmengine has advanced the dataloader past
    the trained iterations). Main-process numpy and ``random`` states are
    restored only when the training dataloader uses worker processes: with
    ``num_workers=0`` the data pipeline draws from them in the main process
    and replaying the skipped batches already reproduces them. Loading
    weights with ``load_from`` (not resuming) does not touch the states.

    Args:
        strict (bool): Warn when a resumed checkpoint has no saved state
            (it then continues with freshly seeded streams). Default: True.
    """

    priority = 'VERY_LOW'

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self._pending: Optional[Dict[str, Any]] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = get_rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._pending = checkpoint.get(CHECKPOINT_KEY)
        if self._pending is None and self.strict:
            runner.logger.warning(
                'RNGStateHook: the checkpoint has no random-number state; a '
                'resumed run will not repeat the random draws of an '
                'uninterrupted one.')

    def before_train(self, runner) -> None:
        if runner.iter == 0:  # load_from, or a fresh run: keep the seeding
            self._pending = None

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch: Any = None) -> None:
        if self._pending is None:
            return
        workers = getattr(runner.train_dataloader, 'num_workers', 0)
        set_rng_state(self._pending, numpy_and_python=workers > 0)
        self._pending = None
        runner.logger.info(
            f'RNGStateHook: restored the random-number state of iteration '
            f'{runner.iter}.')


@register_into_toolboxes('HOOKS')
class StepRecordHook(Hook):
    """Record the losses of every training iteration, per rank.

    Writes ``{work_dir}/{out_dir}/rank{r}.jsonl`` with one line per step:
    ``{"iter": i, "rank": r, "losses": {"loss": ..., "loss_cls": ...}}``
    (``iter`` is 0-based). Lines are appended and flushed, so a resumed run
    continues the same file and a killed one keeps every finished step.

    Args:
        out_dir (str): Folder under the work dir. Default: 'step_records'.
    """

    priority = 'LOW'

    def __init__(self, out_dir: str = 'step_records') -> None:
        self.out_dir = out_dir

    def after_train_iter(self, runner, batch_idx: int,
                         data_batch: Any = None,
                         outputs: Optional[dict] = None) -> None:
        losses = {
            key: float(value.item() if torch.is_tensor(value) else value)
            for key, value in (outputs or {}).items()
            if key.startswith('loss')
        }
        folder = osp.join(runner.work_dir, self.out_dir)
        os.makedirs(folder, exist_ok=True)
        rank = get_rank()
        line = json.dumps(dict(iter=runner.iter, rank=rank, losses=losses,
                               finite=all(map(math.isfinite,
                                              losses.values()))))
        with open(osp.join(folder, f'rank{rank}.jsonl'), 'a') as f:
            f.write(line + '\n')
