"""Demo classification pretraining on the shape crops, saved in the official
checkpoint layouts.

:func:`pretrain_demo_classifier` trains a reduced classifier
(``l2vit_demo``, ``inline_pvt_demo``, ``inline_swin_demo``, from timm's
registry) on :mod:`~mmdet_l2vit.datasets.shape_crops` with AdamW, linear
warm-up and a cosine schedule (timm's ``CosineLRScheduler``, as the official
InLine code) and an EMA of the weights, logs like an mmengine runner, reports
the held-out top-1 and writes the checkpoint the family's official training
script would write:

- L²ViT (``utils.save_model``): ``model``, ``optimizer``, ``epoch``,
  ``scaler``, ``args`` (an ``argparse.Namespace`` with the official
  ``main.py`` fields) and ``model_ema``;
- InLine (``utils.save_checkpoint_new``): ``model``, ``optimizer``,
  ``lr_scheduler``, ``max_accuracy``, ``epoch`` and ``config`` (a frozen
  yacs ``CfgNode`` with the official ``config.py`` fields).

So the demo detectors and segmentors load them through the same
``init_cfg=dict(type='Pretrained', checkpoint=...)`` path as the released
ImageNet files. Files are written atomically.
"""
import argparse
import dataclasses
import math
import os
import os.path as osp
import time
from datetime import timedelta
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
from mmengine.logging import print_log
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn

from ..checkpoint import read_checkpoint_file
from ..datasets.shape_crops import (ShapeCrops, iterate_batches,
                                    make_shape_crops, normalize_crops)
from ..datasets.shapes import SHAPE_CLASSES

#: Backbone families and the official checkpoint layout each one uses.
FAMILIES = ('L2ViT', 'InLinePVT', 'InLineSwin')
#: ``data_set`` / ``DATA.DATASET`` recorded in the checkpoints.
DATASET_NAME = 'demo-shapes'


#: Per-family defaults of the settings left at None (measured with 32 px
#: crops, batch 32, held-out top-1 after the run: L2ViT 86.6 % with lr 1e-3,
#: weight decay 0.05 and label smoothing 0.1 in 2000 iterations, 92.4 % with
#: lr 3e-3, 91.3 % with the settings below in 1800; lr 3e-3 with a 100-
#: iteration warm-up stays at chance. InLine-PVT: 89.5 % at lr 1e-3, 87.2 %
#: at 1.5e-3, chance at 3e-3. InLine-Swin: 84.6 % with lr 3e-4, weight
#: decay 0.05 and label smoothing 0.1 in 1500 iterations, 86.2 % at lr
#: 6e-4 with weight decay 0.02 and no label smoothing, 86.3 % with lr 8e-4
#: and a 500-iteration warm-up, 86.8 % with the settings below; it stays at
#: chance with lr 1e-3.)
FAMILY_DEFAULTS: Dict[str, Dict[str, Any]] = {
    'L2ViT': dict(iters=1800, lr=2e-3, warmup_iters=200, weight_decay=0.02,
                  label_smoothing=0.0),
    'InLinePVT': dict(iters=2000, lr=1e-3, warmup_iters=200,
                      weight_decay=0.05, label_smoothing=0.1),
    'InLineSwin': dict(iters=2000, lr=6e-4, warmup_iters=300,
                       weight_decay=0.05, label_smoothing=0.1),
}


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    """Hyper-parameters of the demo pretraining (also what the checkpoint's
    ``args`` / ``config`` record). Iterations count optimizer steps;
    ``iters``, ``lr``, ``warmup_iters``, ``weight_decay`` and
    ``label_smoothing`` left at None take the family's
    :data:`FAMILY_DEFAULTS` (:meth:`for_family`)."""

    iters: Optional[int] = None
    batch_size: int = 32
    crop_size: int = 32
    lr: Optional[float] = None
    min_lr: float = 1e-5
    warmup_iters: Optional[int] = None
    warmup_lr: float = 1e-6
    weight_decay: Optional[float] = None
    label_smoothing: Optional[float] = None
    clip_grad: Optional[float] = 5.0
    ema_decay: float = 0.998
    drop_path_rate: float = 0.0
    num_train: int = 8000
    num_heldout: int = 1000
    seed: int = 0

    def for_family(self, family: str) -> 'PretrainSettings':
        """These settings with the None fields set from the family."""
        if family not in FAMILY_DEFAULTS:
            raise ValueError(f'unknown family {family!r}; one of '
                             f'{FAMILIES}')
        missing = {k: v for k, v in FAMILY_DEFAULTS[family].items()
                   if getattr(self, k) is None}
        return dataclasses.replace(self, **missing)

    @property
    def iters_per_epoch(self) -> int:
        return self.num_train // self.batch_size

    @property
    def epochs(self) -> int:
        return math.ceil(self.iters / self.iters_per_epoch)


def default_checkpoint_path(name: str) -> str:
    """``work_dirs/demo_pretrain/{name}_cls.pth``."""
    return osp.join('work_dirs', 'demo_pretrain', f'{name}_cls.pth')


def build_demo_classifier(name: str, crop_size: int, num_classes: int,
                          **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, num_classes=...)``; the InLine models also
    get ``img_size=crop_size`` (PVT stores position embeddings and Swin its
    masks for the training size)."""
    if name.startswith('inline_'):
        kwargs.setdefault('img_size', crop_size)
    return timm.create_model(name, num_classes=num_classes, **kwargs)


def official_param_groups(model: nn.Module, weight_decay: float,
                          family: str) -> List[Dict[str, Any]]:
    """Decay / no-decay parameter groups as the official scripts build them.

    No weight decay for 1-D parameters, biases and the model's
    ``no_weight_decay()`` names (and, as Swin's ``build_optimizer``,
    ``no_weight_decay_keywords()``). L²ViT groups carry ConvNeXt's
    ``lr_scale`` (1.0: no layer decay).
    """
    skip = set(getattr(model, 'no_weight_decay', lambda: ())())
    keywords = tuple(getattr(model, 'no_weight_decay_keywords',
                             lambda: ())())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if (param.ndim <= 1 or name.endswith('.bias') or name in skip
                or any(k in name for k in keywords)):
            no_decay.append(param)
        else:
            decay.append(param)
    if family == 'L2ViT':
        return [dict(weight_decay=weight_decay, params=decay, lr_scale=1.0),
                dict(weight_decay=0., params=no_decay, lr_scale=1.0)]
    return [dict(params=decay), dict(params=no_decay, weight_decay=0.)]


@torch.no_grad()
def evaluate_top1(model: nn.Module, crops: ShapeCrops,
                  batch_size: int = 200) -> float:
    """Top-1 accuracy (%) of ``model`` (put in eval mode) on ``crops``."""
    model.eval()
    images = torch.from_numpy(crops.images.copy())
    labels = torch.from_numpy(crops.labels.copy())
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(normalize_crops(images[start:start + batch_size]))
        correct += int((logits.argmax(1) ==
                        labels[start:start + batch_size]).sum())
    return 100. * correct / len(labels)


def l2vit_args(name: str, settings: PretrainSettings,
               output_dir: str) -> argparse.Namespace:
    """The official L²ViT (ConvNeXt-style) ``main.py`` arguments of this run:
    every ``get_args_parser()`` field, set to what the demo did."""
    s = settings
    return argparse.Namespace(
        batch_size=s.batch_size, epochs=s.epochs, update_freq=1, model=name,
        drop_path=s.drop_path_rate, input_size=s.crop_size,
        layer_scale_init_value=1e-6, model_ema=True,
        model_ema_decay=s.ema_decay, model_ema_force_cpu=False,
        model_ema_eval=True, opt='adamw', opt_eps=1e-8, opt_betas=None,
        clip_grad=s.clip_grad, momentum=0.9, weight_decay=s.weight_decay,
        weight_decay_end=s.weight_decay, sched='cosine', lr=s.lr,
        layer_decay=1.0, min_lr=s.min_lr, warmup_lr=s.warmup_lr,
        warmup_epochs=0, warmup_steps=s.warmup_iters, color_jitter=0.,
        aa=None, smoothing=s.label_smoothing, train_interpolation='area',
        crop_pct=None, reprob=0., remode='pixel', recount=1, resplit=False,
        mixup=0., cutmix=0., cutmix_minmax=None, mixup_prob=1.0,
        mixup_switch_prob=0.5, mixup_mode='batch', finetune='',
        head_init_scale=1.0, model_key='model|module', model_prefix='',
        data_path='', eval_data_path=None, nb_classes=len(SHAPE_CLASSES),
        imagenet_default_mean_and_std=True, data_set=DATASET_NAME,
        output_dir=output_dir, log_dir=output_dir, device='cpu',
        seed=s.seed, resume='', auto_resume=False, save_ckpt=True,
        save_ckpt_freq=1, save_ckpt_num=3, start_epoch=0, eval=False,
        dist_eval=False, disable_eval=False, num_workers=0, pin_mem=False,
        throughput=False, throughput_train=False, world_size=1,
        local_rank=-1, dist_on_itp=False, dist_url='env://', use_amp=False,
        enable_wandb=False, project='l2vit', wandb_ckpt=False,
        log_period=50, evaluate_freq=1, distributed=False, log=output_dir)


def inline_config(name: str, model: nn.Module, family: str,
                  settings: PretrainSettings, output_dir: str) -> Any:
    """The official InLine ``config.py`` tree of this run, as the frozen
    yacs ``CfgNode`` that ``get_config`` returns."""
    from yacs.config import CfgNode
    s = settings
    arch = dict(getattr(model, 'arch_settings', {}))
    swin = dict(
        PATCH_SIZE=4, IN_CHANS=3, EMBED_DIM=96, DEPTHS=[2, 2, 6, 2],
        NUM_HEADS=[3, 6, 12, 24], WINDOW_SIZE=7, MLP_RATIO=4.0,
        QKV_BIAS=True, QK_SCALE=None, KA=[7, 7, 7, 7],
        DIM_REDUCTION=[4, 4, 4, 4], STAGES=[True] * 4, STAGES_NUM=[-1] * 4,
        RPB=True, PADDING_MODE='zeros', SHARE_DWC_KERNEL=True,
        SHARE_QKV=False, APE=False, PATCH_NORM=True, LR_FACTOR=2,
        DEPTHS_LR=[2, 2, 2, 2], FUSION_TYPE='add', STAGE_CFG=None)
    attn_type = 'IIII'
    if family == 'InLineSwin' and arch:
        swin.update(EMBED_DIM=arch['embed_dims'], DEPTHS=list(arch['depths']),
                    NUM_HEADS=list(arch['num_heads']),
                    WINDOW_SIZE=arch.get('window_size', 56),
                    MLP_RATIO=float(arch.get('mlp_ratio', 4.)))
        attn_type = arch.get('attn_types', 'IIIS')
    config = dict(
        BASE=[''],
        DATA=dict(BATCH_SIZE=s.batch_size, DATA_PATH='',
                  DATASET=DATASET_NAME, IMG_SIZE=s.crop_size,
                  INTERPOLATION='area', ZIP_MODE=False, CACHE_MODE='part',
                  PIN_MEMORY=False, NUM_WORKERS=0),
        MODEL=dict(
            TYPE=name if family == 'InLinePVT' else 'inline_swin',
            NAME=name, RESUME='', NUM_CLASSES=len(SHAPE_CLASSES),
            DROP_RATE=0.0, DROP_PATH_RATE=s.drop_path_rate,
            LABEL_SMOOTHING=s.label_smoothing, SWIN=swin, SWIN_HR={},
            SWIN_LRVIT={}, PVD={},
            INLINE=dict(ATTN_TYPE=attn_type, PVT_LA_SR_RATIOS=1111,
                        CSWIN_LA_SPLIT_SIZE='56-28-14-7')),
        TRAIN=dict(
            START_EPOCH=0, EPOCHS=s.epochs, WARMUP_EPOCHS=0,
            COOLDOWN_EPOCHS=0, WEIGHT_DECAY=s.weight_decay, BASE_LR=s.lr,
            WARMUP_LR=s.warmup_lr, MIN_LR=s.min_lr, CLIP_GRAD=s.clip_grad,
            AUTO_RESUME=False, USE_CHECKPOINT=False,
            LR_SCHEDULER=dict(NAME='cosine', DECAY_EPOCHS=30,
                              DECAY_RATE=0.1),
            OPTIMIZER=dict(NAME='adamw', EPS=1e-8, BETAS=(0.9, 0.999),
                           MOMENTUM=0.9)),
        AUG=dict(COLOR_JITTER=0.0, AUTO_AUGMENT='none', REPROB=0.0,
                 REMODE='pixel', RECOUNT=1, MIXUP=0.0, CUTMIX=0.0,
                 CUTMIX_MINMAX=None, MIXUP_PROB=1.0, MIXUP_SWITCH_PROB=0.5,
                 MIXUP_MODE='batch'),
        TEST=dict(CROP=True), AMP=False, OUTPUT=output_dir, TAG='default',
        SAVE_FREQ=1, PRINT_FREQ=50, SEED=s.seed, EVAL_MODE=False,
        THROUGHPUT_MODE=False, LOCAL_RANK=0)
    node = CfgNode(config)
    node.freeze()
    return node


def official_checkpoint(family: str, name: str, model: nn.Module,
                        ema: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: CosineLRScheduler,
                        settings: PretrainSettings, max_accuracy: float,
                        output_dir: str) -> Dict[str, Any]:
    """The dict the family's official training script saves.

    ``epoch`` is the 0-based index of the last epoch, as both official
    loops save it (``start_epoch = epoch + 1`` on resume).
    """
    if family not in FAMILIES:
        raise ValueError(f'unknown family {family!r}; one of {FAMILIES}')
    epoch = settings.epochs - 1
    if family == 'L2ViT':
        # NativeScaler's GradScaler state, as a CUDA run saves it (the run
        # itself is fp32: use_amp=False).
        scaler = torch.amp.GradScaler('cpu').state_dict()
        return dict(model=model.state_dict(),
                    optimizer=optimizer.state_dict(), epoch=epoch,
                    scaler=scaler,
                    args=l2vit_args(name, settings, output_dir),
                    model_ema=ema.state_dict())
    return dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                lr_scheduler=scheduler.state_dict(),
                max_accuracy=float(max_accuracy), epoch=epoch,
                config=inline_config(name, model, family, settings,
                                     output_dir))


def save_checkpoint_atomic(checkpoint: Dict[str, Any], path: str) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it,
    so an interrupted write never leaves a truncated checkpoint."""
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = osp.join(directory, f'.{osp.basename(path)}.{os.getpid()}.tmp')
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def _log_iter(it: int, total: int, lr: float, iter_times: List[float],
              data_times: List[float], losses: List[float]) -> None:
    """One mmengine-runner style progress line (window averages)."""
    mean_time = sum(iter_times) / len(iter_times)
    eta = timedelta(seconds=int(mean_time * (total - it)))
    print_log(
        f'Iter(train) [{it:>{len(str(total))}}/{total}]  lr: {lr:.4e}  '
        f'eta: {eta}  time: {mean_time:.4f}  '
        f'data_time: {sum(data_times) / len(data_times):.4f}  '
        f'loss: {sum(losses) / len(losses):.4f}', logger='current')


def _log_heldout(model: nn.Module, ema: nn.Module, heldout: ShapeCrops,
                 prefix: str = '') -> Tuple[float, float]:
    """Log and return the held-out top-1 of the model and its EMA."""
    top1, top1_ema = evaluate_top1(model, heldout), evaluate_top1(ema, heldout)
    print_log(f'{prefix}held-out top-1: {top1:.1f}% (model), '
              f'{top1_ema:.1f}% (ema) on {len(heldout.labels)} crops',
              logger='current')
    return top1, top1_ema


def _train(model: nn.Module, ema: ModelEmaV3,
           optimizer: torch.optim.Optimizer, scheduler: CosineLRScheduler,
           crops: ShapeCrops, settings: PretrainSettings, log_interval: int,
           heldout: ShapeCrops, eval_interval: Optional[int]) -> None:
    """The training iterations, with a held-out top-1 every
    ``eval_interval`` iterations (if given)."""
    generator = torch.Generator().manual_seed(settings.seed)
    batches = iterate_batches(crops, settings.batch_size, generator)
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    iter_times: List[float] = []
    data_times: List[float] = []
    losses: List[float] = []
    model.train()
    tick = time.perf_counter()
    for it in range(1, settings.iters + 1):
        images, labels, _ = next(batches)
        data_times.append(time.perf_counter() - tick)
        loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad)
        optimizer.step()
        scheduler.step_update(num_updates=it)
        ema.update(model, step=it)
        losses.append(loss.item())
        iter_times.append(time.perf_counter() - tick)
        tick = time.perf_counter()
        if it % log_interval == 0 or it == settings.iters:
            _log_iter(it, settings.iters, optimizer.param_groups[0]['lr'],
                      iter_times[-log_interval:], data_times[-log_interval:],
                      losses[-log_interval:])
        if eval_interval and it % eval_interval == 0 and it < settings.iters:
            _log_heldout(model, ema.module, heldout, f'Iter(val) [{it}] ')
            model.train()
            tick = time.perf_counter()


def pretrain_demo_classifier(name: str,
                             out: Optional[str] = None,
                             iters: Optional[int] = None,
                             batch_size: int = PretrainSettings.batch_size,
                             crop_size: int = PretrainSettings.crop_size,
                             lr: Optional[float] = None,
                             seed: int = PretrainSettings.seed,
                             num_train: int = PretrainSettings.num_train,
                             num_heldout: int = PretrainSettings.num_heldout,
                             family: Optional[str] = None,
                             model_kwargs: Optional[Dict[str, Any]] = None,
                             num_threads: Optional[int] = None,
                             log_interval: int = 50,
                             eval_interval: Optional[int] = None,
                             **settings: Any) -> Dict[str, Any]:
    """Train a demo classifier on the shape crops and save it in its
    family's official checkpoint layout.

    Args:
        name (str): timm model name, e.g. ``'l2vit_demo'``.
        out (str, optional): Checkpoint path. Default:
            ``work_dirs/demo_pretrain/{name}_cls.pth``.
        iters (int, optional): Optimizer steps. Default: the family's
            (:data:`FAMILY_DEFAULTS`: 1800 for L2ViT, 2000 for the InLine
            families).
        batch_size (int): Crops per step. Default: 32.
        crop_size (int): Crop side in pixels (a multiple of 32). Default: 32.
        lr (float, optional): Peak AdamW learning rate. Default: the
            family's (2e-3 for L2ViT, 1e-3 for InLine-PVT, 6e-4 for
            InLine-Swin).
        seed (int): Seeds the model init, the batches and the crops.
            Default: 0.
        num_train (int): Training crops. Default: 8000.
        num_heldout (int): Held-out crops for the final top-1.
            Default: 1000.
        family (str, optional): Checkpoint layout, one of
            :data:`FAMILIES`. Default: the model's ``family`` attribute.
        model_kwargs (dict, optional): More ``timm.create_model``
            arguments (e.g. ``drop_path_rate`` is set from the settings).
        num_threads (int, optional): torch threads during the run.
            Default: ``$OMP_NUM_THREADS``, else 2.
        log_interval (int): Iterations between progress lines. Default: 50.
        eval_interval (int, optional): Iterations between held-out top-1
            lines during training. Default: None (at the end only).
        **settings: Other :class:`PretrainSettings` fields (``min_lr``,
            ``warmup_iters``, ``weight_decay``, ``ema_decay``, ...).

    Returns:
        dict: ``top1`` and ``top1_ema`` (held-out top-1, %), ``seconds``
        (wall time, crops included), ``out``, ``family``, ``epoch`` and
        ``settings`` (the :class:`PretrainSettings` used, as a dict).
    """
    start = time.perf_counter()
    cfg = PretrainSettings(iters=iters, batch_size=batch_size,
                           crop_size=crop_size, lr=lr, seed=seed,
                           num_train=num_train, num_heldout=num_heldout,
                           **settings)
    out = out or default_checkpoint_path(name)
    if num_threads is None:
        num_threads = int(os.environ.get('OMP_NUM_THREADS') or 2)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            result = _pretrain(name, out, cfg, family, model_kwargs or {},
                               log_interval, eval_interval)
    finally:
        torch.set_num_threads(prev_threads)
    result['seconds'] = time.perf_counter() - start
    print_log(f'{name}: saved {out} ({result["family"]} layout) in '
              f'{result["seconds"]:.0f} s', logger='current')
    return result


def _pretrain(name: str, out: str, cfg: PretrainSettings,
              family: Optional[str], model_kwargs: Dict[str, Any],
              log_interval: int,
              eval_interval: Optional[int]) -> Dict[str, Any]:
    tick = time.perf_counter()
    train = make_shape_crops(cfg.num_train, 'train', cfg.seed, cfg.crop_size)
    heldout = make_shape_crops(cfg.num_heldout, 'heldout', cfg.seed,
                               cfg.crop_size)
    print_log(f'{name}: {cfg.num_train} training and {cfg.num_heldout} '
              f'held-out {cfg.crop_size}px crops in '
              f'{time.perf_counter() - tick:.1f} s', logger='current')
    model_kwargs = dict(dict(drop_path_rate=cfg.drop_path_rate),
                        **model_kwargs)
    model = build_demo_classifier(name, cfg.crop_size, len(SHAPE_CLASSES),
                                  **model_kwargs)
    family = family or getattr(model, 'family')
    cfg = cfg.for_family(family)
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True,
                     warmup_power=3 / 4)
    optimizer = torch.optim.AdamW(
        official_param_groups(model, cfg.weight_decay, family), lr=cfg.lr,
        betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=cfg.iters, lr_min=cfg.min_lr,
        warmup_t=cfg.warmup_iters, warmup_lr_init=cfg.warmup_lr,
        cycle_limit=1, t_in_epochs=False)
    num_params = sum(p.numel() for p in model.parameters()) / 1e6
    print_log(f'{name} ({family}): {num_params:.2f} M parameters; '
              f'{cfg.iters} iterations of {cfg.batch_size} ({cfg.epochs} '
              f'epochs), {torch.get_num_threads()} threads', logger='current')
    _train(model, ema, optimizer, scheduler, train, cfg, log_interval,
           heldout, eval_interval)
    top1, top1_ema = _log_heldout(model, ema.module, heldout)
    checkpoint = official_checkpoint(family, name, model, ema.module,
                                     optimizer, scheduler, cfg, top1,
                                     osp.dirname(out))
    save_checkpoint_atomic(checkpoint, out)
    _check_readable(out, checkpoint)
    return dict(top1=top1, top1_ema=top1_ema, out=out, family=family,
                epoch=checkpoint['epoch'], settings=dataclasses.asdict(cfg))


def _check_readable(path: str, checkpoint: Dict[str, Any]) -> None:
    """Read ``path`` back with the package's safe reader and compare."""
    read = read_checkpoint_file(path)
    if set(read) != set(checkpoint) or list(read['model']) != list(
            checkpoint['model']):
        raise RuntimeError(f'{path}: written checkpoint reads back '
                           'differently')


__all__ = [
    'FAMILIES', 'FAMILY_DEFAULTS', 'PretrainSettings',
    'build_demo_classifier', 'default_checkpoint_path', 'evaluate_top1',
    'inline_config', 'l2vit_args', 'official_checkpoint',
    'official_param_groups', 'pretrain_demo_classifier',
    'save_checkpoint_atomic'
]
