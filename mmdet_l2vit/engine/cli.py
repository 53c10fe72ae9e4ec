"""``tools/train.py`` and ``tools/test.py`` for mmdet and mmseg configs.

One implementation serves both toolboxes; it branches on the config's
``default_scope`` only where they differ (``--out``, ``--show-dir``,
metric names). The arguments are those of mmdet's and mmseg's tools.
Before the runner is built, the datasets and checkpoint paths are checked
(:mod:`mmdet_l2vit.datasets.checks`, :mod:`.preflight`), so bad input fails
in seconds with a message that says what to do.
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional

from mmengine.config import Config, DictAction
from mmengine.logging import print_log

from ..datasets.checks import (DatasetError, check_config_data,
                               iter_dataset_cfgs)
from ..datasets.demo_data import DEFAULT_ROOT, ensure_demo_data
from .preflight import (CheckpointNotFoundError, ConfigError,
                        adapt_for_cpu_distributed, check_amp_device,
                        check_checkpoint_paths)

#: What a user can fix: printed as one ``error:`` line (exit status 2)
#: instead of a traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, DatasetError, CheckpointNotFoundError)


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, as key=value pairs, e.g. '
        'train_dataloader.batch_size=4 model.backbone.init_cfg=None')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher (tools/dist_*.sh and '
        'tools/slurm_train.sh set it); on a machine without a GPU the gloo '
        'backend is used automatically')
    # torch >= 2.0's launchers pass --local-rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def train_parser() -> argparse.ArgumentParser:
    """Arguments of ``tools/train.py``."""
    parser = argparse.ArgumentParser(
        description='Train a detector or segmentor (mmdet / mmseg config)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (needs a GPU)')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the lr by total batch / auto_scale_lr.base_batch_size')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint, or (without a path) from the '
        'latest checkpoint in the work dir')
    _common_args(parser)
    return parser


def test_parser() -> argparse.ArgumentParser:
    """Arguments of ``tools/test.py``."""
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a detector or segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out', help='detection: dump predictions to this .pkl file; '
        'segmentation: save predicted label maps in this directory')
    parser.add_argument('--show', action='store_true',
                        help='show prediction results in a window')
    parser.add_argument(
        '--show-dir', help='save painted predictions in this directory; '
        'a relative one is placed in the work dir (mmdet: '
        'work_dir/<timestamp>/DIR, mmseg: work_dir/DIR/vis_data/vis_image)')
    parser.add_argument('--wait-time', type=float, default=2,
                        help='the interval of --show (s)')
    parser.add_argument('--metrics-json',
                        help='also write the metrics to this JSON file')
    _common_args(parser)
    return parser


def _load_cfg(args: argparse.Namespace) -> Config:
    """Read the config file and apply ``--cfg-options`` and the work dir.

    Raises:
        ConfigError: The config file does not exist.
    """
    if not osp.isfile(args.config):
        raise ConfigError(f'config file {args.config!r} not found.')
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    return cfg


def _use_amp(cfg: Config) -> None:
    """``--amp``: mmengine's ``AmpOptimWrapper`` with dynamic loss scaling.

    Raises:
        DeviceError: No GPU.
    """
    check_amp_device()
    if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'OptimWrapper':
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def _enable_auto_scale_lr(cfg: Config) -> None:
    """``--auto-scale-lr``: let mmengine scale the lr by the total batch.

    Raises:
        ConfigError: The config names no ``auto_scale_lr.base_batch_size``.
    """
    if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
        raise ConfigError('--auto-scale-lr needs '
                          '`auto_scale_lr = dict(base_batch_size=N)` in '
                          'the config.')
    cfg.auto_scale_lr.enable = True


def setup_train_cfg(args: argparse.Namespace) -> Config:
    """The config ``tools/train.py`` runs, with the CLI options applied.

    Args:
        args (argparse.Namespace): Parsed :func:`train_parser` arguments.

    Returns:
        Config: The final config.

    Raises:
        ConfigError: Options that cannot run with this config or machine.
    """
    cfg = _load_cfg(args)
    if args.amp:
        _use_amp(cfg)
    if args.auto_scale_lr:
        _enable_auto_scale_lr(cfg)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def _show_predictions(cfg: Config, args: argparse.Namespace,
                      scope: str) -> None:
    """``--show`` / ``--show-dir``: switch on the visualization hook.

    Raises:
        ConfigError: The config has no visualization hook.
    """
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise ConfigError('--show/--show-dir need a visualization hook '
                          'in default_hooks.')
    hook.draw = True
    if args.show:
        hook.show, hook.wait_time = True, args.wait_time
    if not args.show_dir:
        return
    if scope == 'mmseg':  # SegVisualizationHook saves via backends
        cfg.visualizer.save_dir = args.show_dir if osp.isabs(
            args.show_dir) else osp.join(cfg.work_dir, args.show_dir)
    else:
        hook.test_out_dir = args.show_dir


def _save_predictions(cfg: Config, out: str, scope: str) -> None:
    """``--out`` of mmseg: label maps in a folder. (mmdet's ``.pkl`` is
    written by a ``DumpDetResults`` metric added to the built runner.)

    Raises:
        ConfigError: A detection ``--out`` that is not a pickle file.
    """
    if scope == 'mmseg':
        cfg.test_evaluator['output_dir'] = out
        cfg.test_evaluator['keep_results'] = True
    elif not out.endswith(('.pkl', '.pickle')):
        raise ConfigError('--out must be a .pkl or .pickle file for '
                          'detection configs')


def setup_test_cfg(args: argparse.Namespace) -> Config:
    """The config ``tools/test.py`` runs for the parsed :func:`test_parser`
    arguments (checkpoint, ``--show``/``--show-dir``, ``--out``); raises
    :class:`ConfigError` for options this config cannot run."""
    cfg = _load_cfg(args)
    cfg.load_from = args.checkpoint
    scope = cfg.get('default_scope', 'mmdet')
    if args.show or args.show_dir:
        _show_predictions(cfg, args, scope)
    if args.out is not None:
        _save_predictions(cfg, args.out, scope)
    return cfg


def ensure_demo_data_for(cfg: Config, loaders: List[str]) -> None:
    """Generate the synthetic demo data when a config reads it and it is
    missing (single-process runs; distributed ranks would race)."""
    roots = [str(ds.get('data_root', '')) for _, ds in iter_dataset_cfgs(
        cfg, loaders)]
    demo = osp.normpath(DEFAULT_ROOT)
    if not any(osp.normpath(r).startswith(demo) for r in roots if r):
        return
    if cfg.get('launcher', 'none') != 'none':
        return  # the checks below say how to generate it
    if ensure_demo_data():
        print_log(f'generated the synthetic demo data in {demo}/',
                  logger='current')


def preflight(cfg: Config, loaders: List[str], training: bool) -> None:
    """Check data and checkpoints, then prepare CPU distributed runs.

    Args:
        cfg (Config): The final config.
        loaders (list[str]): Dataloaders the run reads.
        training (bool): Whether the run trains (it then also reads the
            ``init_cfg`` checkpoints).

    Raises:
        DatasetError: A dataset is missing or unusable.
        CheckpointNotFoundError: A checkpoint file is missing.
        LauncherError: The launcher's environment is incomplete.
    """
    ensure_demo_data_for(cfg, loaders)
    check_config_data(cfg, loaders)
    check_checkpoint_paths(cfg, training=training)
    adapt_for_cpu_distributed(cfg)


def build_runner(cfg: Config):
    """``Runner.from_cfg`` or the registered ``runner_type``."""
    from mmengine.registry import RUNNERS, init_default_scope
    from mmengine.runner import Runner
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def format_metrics(metrics: Dict[str, float]) -> str:
    """One line per task: box AP / mask AP (COCO) or mIoU (mmseg)."""
    lines = []
    for task, label in (('bbox', 'box'), ('segm', 'mask')):
        keys = [k for k in metrics if k.endswith(f'{task}_mAP')]
        for key in keys:
            base = key[:-len('_mAP')]
            parts = [f'{label} AP {metrics[key]:.3f}'] + [
                f'AP{s} {metrics[base + "_mAP_" + s]:.3f}'
                for s in ('50', '75') if base + '_mAP_' + s in metrics
            ]
            lines.append('  '.join(parts))
    for key in ('mIoU', 'mAcc', 'aAcc'):
        if key in metrics:
            lines.append(f'{key} {metrics[key]:.2f} %')
    return '\n'.join(lines) if lines else json.dumps(metrics)


def _fail(error: Exception) -> int:
    """Print a user error as one ``error:`` line; the exit status (2)."""
    print(f'\nerror: {error}', file=sys.stderr)
    return 2


def _report_metrics(metrics: Dict[str, float],
                    args: argparse.Namespace) -> None:
    """Print the test metrics; also write them to ``--metrics-json``."""
    print(f'\nTest results ({osp.basename(args.config)}, '
          f'{args.checkpoint}):\n{format_metrics(metrics)}')
    if args.metrics_json:
        with open(args.metrics_json, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items()
                       if isinstance(v, (int, float))}, f, indent=1)


def train(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``tools/train.py``; returns the exit status."""
    args = train_parser().parse_args(argv)
    try:
        cfg = setup_train_cfg(args)
        preflight(cfg, ['train_dataloader', 'val_dataloader'], training=True)
    except USER_ERRORS as e:
        return _fail(e)
    build_runner(cfg).train()
    return 0


def test(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``tools/test.py``: prints the metrics (and writes
    them to ``--metrics-json``); returns the exit status."""
    args = test_parser().parse_args(argv)
    try:
        cfg = setup_test_cfg(args)
        preflight(cfg, ['test_dataloader'], training=False)
    except USER_ERRORS as e:
        return _fail(e)
    scope = cfg.get('default_scope', 'mmdet')
    runner = build_runner(cfg)
    if args.out is not None and scope != 'mmseg':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=args.out))
    metrics = runner.test()
    if runner.rank == 0:
        _report_metrics(metrics, args)
    return 0
