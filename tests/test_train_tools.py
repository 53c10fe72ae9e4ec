"""tools/train.py, tools/test.py and tools/dist_train.sh on CPU: distributed
training with gloo, exact resumption after a kill, and clear errors for bad
input. Runs the demo Mask R-CNN (reduced L2ViT) on a few tiny images."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from conftest import require_toolbox

ROOT = Path(__file__).resolve().parents[1]
DEMO_CFG = ROOT / 'configs' / 'demo' / 'maskrcnn_l2vit_demo_scratch.py'
SEG_DEMO_CFG = ROOT / 'configs' / 'demo' / 'upernet_l2vit_demo_scratch.py'
PYTHON = sys.executable


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory) -> Path:
    from mmdet_l2vit.datasets import generate_demo_data
    root = tmp_path_factory.mktemp('tiny_demo')
    generate_demo_data(str(root), seed=0, sizes={'train': 12, 'val': 3})
    return root


def _write_cfg(path: Path, data: Path, extra: str = '') -> Path:
    """A config inheriting the demo one: tiny data, a few iterations, no
    validation, a checkpoint every 2 iterations, per-rank step records."""
    path.write_text(textwrap.dedent(f"""
        _base_ = [{str(DEMO_CFG)!r}]
        data_root = {str(data / 'coco') + '/'!r}
        train_dataloader = dict(batch_size=2, dataset=dict(
            data_root=data_root))
        test_dataloader = dict(batch_size=1, dataset=dict(
            data_root=data_root))
        test_evaluator = dict(
            ann_file=data_root + 'annotations/instances_val2017.json')
        val_dataloader = None
        val_cfg = None
        val_evaluator = None
        train_cfg = dict(_delete_=True, type='IterBasedTrainLoop',
                         max_iters=6)
        param_scheduler = [dict(type='LinearLR', start_factor=0.1,
                                by_epoch=False, begin=0, end=6)]
        default_hooks = dict(
            logger=dict(interval=1),
            checkpoint=dict(interval=2, max_keep_ckpts=-1))
        custom_hooks = [dict(type='RNGStateHook'),
                        dict(type='StepRecordHook')]
    """) + textwrap.dedent(extra))
    return path


def _env(**extra: str) -> Dict[str, str]:
    """The tools' environment: no PYTHONPATH for the repository (the package
    is installed, editable), no launcher variables inherited from ours."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('SLURM_', 'OMPI_')) and k not in (
               'RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR',
               'MASTER_PORT', 'PYTHONPATH')}
    env.update(OMP_NUM_THREADS='1')
    env.update(extra)
    return env


def _run(args: List[str], **env: str) -> subprocess.CompletedProcess:
    """Run a tool in its own session, output to files: a killed trainer's
    orphaned dataloader worker can neither hold our pipes open nor outlive
    the test."""
    with tempfile.TemporaryFile('w+') as out, \
            tempfile.TemporaryFile('w+') as err:
        proc = subprocess.Popen(args, cwd=ROOT, env=_env(**env), stdout=out,
                                stderr=err, text=True,
                                start_new_session=True)
        try:
            proc.wait(timeout=600)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, proc.returncode, out.read(),
                                           err.read())


def _records(work_dir: Path, rank: int = 0) -> List[dict]:
    lines = (work_dir / 'step_records' / f'rank{rank}.jsonl').read_text()
    return [json.loads(line) for line in lines.splitlines()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_dist_train_two_cpu_processes_with_gloo(tiny_data, tmp_path):
    require_toolbox('mmdet.models')
    cfg = _write_cfg(tmp_path / 'cfg.py', tiny_data,
                     'train_cfg = dict(max_iters=4)\n')
    work = tmp_path / 'work'
    result = _run(['bash', 'tools/dist_train.sh', str(cfg), '2',
                   '--work-dir', str(work)], PORT=str(_free_port()),
                  PYTHON=PYTHON)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'gloo' in result.stdout + result.stderr
    for rank in (0, 1):
        records = _records(work, rank)
        assert [r['iter'] for r in records] == [0, 1, 2, 3]
        assert all(r['finite'] and r['losses']['loss'] > 0 for r in records)
    # ranks see different images, so their losses differ
    assert _records(work, 0)[0]['losses'] != _records(work, 1)[0]['losses']
    # one checkpoint set, written once (by rank 0)
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_2.pth',
                                                         'iter_4.pth']
    assert (work / 'last_checkpoint').read_text().strip().endswith(
        'iter_4.pth')
    ckpt = torch.load(work / 'iter_4.pth', map_location='cpu',
                      weights_only=False)
    assert ckpt['meta']['iter'] == 4
    assert all(k.startswith(('backbone.', 'neck.', 'rpn_head.', 'roi_head.'))
               for k in ckpt['state_dict'])  # no DDP 'module.' prefix


KILL_HOOK = '''
import os
import signal

from mmdet.registry import HOOKS
from mmengine.hooks import Hook


@HOOKS.register_module()
class KillAtIterHook(Hook):
    """Kill the process (SIGKILL, no clean-up) after iteration ``at``."""

    priority = 'LOWEST'

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
'''


def test_resume_after_kill_continues_like_an_uninterrupted_run(
        tiny_data, tmp_path):
    require_toolbox('mmdet.models')
    (tmp_path / 'kill_hook.py').write_text(KILL_HOOK)
    plain = _write_cfg(tmp_path / 'plain.py', tiny_data)
    killed = _write_cfg(
        tmp_path / 'killed.py', tiny_data, """
        custom_imports = dict(imports=['mmdet_l2vit', 'mmdet_l2vit.datasets',
                                       'mmdet_l2vit.visualization',
                                       'kill_hook'])
        custom_hooks = [dict(type='RNGStateHook'),
                        dict(type='StepRecordHook'),
                        dict(type='KillAtIterHook', at=4)]
        """)
    env = dict(PYTHONPATH=str(tmp_path))
    ref_dir, run_dir = tmp_path / 'reference', tmp_path / 'run'
    ref = _run([PYTHON, 'tools/train.py', str(plain), '--work-dir',
                str(ref_dir)], **env)
    assert ref.returncode == 0, ref.stderr[-3000:]
    first = _run([PYTHON, 'tools/train.py', str(killed), '--work-dir',
                  str(run_dir)], **env)
    assert first.returncode == -signal.SIGKILL
    # Killed during iteration index 4: iter_4.pth (after 4 iterations) is
    # the last complete checkpoint; a half-written newer file is ignored.
    assert (run_dir / 'last_checkpoint').read_text().strip().endswith(
        'iter_4.pth')
    (run_dir / 'iter_6.pth').write_bytes(b'PK\x03\x04 truncated')
    resumed = _run([PYTHON, 'tools/train.py', str(plain), '--work-dir',
                    str(run_dir), '--resume'], **env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stdout + resumed.stderr
    assert 'resumed epoch: 0, iter: 4' in out
    assert 'restored the random-number state of iteration 4' in out

    reference = _records(ref_dir)
    records = _records(run_dir)
    assert [r['iter'] for r in reference] == [0, 1, 2, 3, 4, 5]
    # 0-4 from the killed run, then 4-5 again from the resumed one
    assert [r['iter'] for r in records] == [0, 1, 2, 3, 4, 4, 5]
    continued = records[5:]
    for got, want in zip(records[:5] + continued, reference[:5] +
                         reference[4:]):
        assert got['iter'] == want['iter']
        for key, value in want['losses'].items():
            assert got['losses'][key] == pytest.approx(value, rel=1e-5,
                                                       abs=1e-7), key
    final = torch.load(run_dir / 'iter_6.pth', map_location='cpu',
                       weights_only=False)
    assert final['meta']['iter'] == 6


# ---- bad input: clear errors before anything is built ---------------------


def _train_error(args: List[str], capsys) -> str:
    from mmdet_l2vit.engine.cli import train
    assert train(args) == 2
    return capsys.readouterr().err


def test_missing_coco_names_layout_and_demo(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here
    err = _train_error([str(ROOT / 'configs' / 'maskrcnn_l2vit_t_coco.py'),
                        '--work-dir', str(tmp_path / 'w')], capsys)
    assert 'data/coco/annotations/instances_train2017.json' in err
    assert 'data/coco/train2017/' in err and 'COCO 2017' in err
    assert 'make demo' in err and 'configs/demo/maskrcnn_l2vit_demo.py' in err
    assert not (tmp_path / 'w').exists()  # nothing was built or written


def test_missing_ade_names_layout_and_demo(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _train_error([str(ROOT / 'configs' / 'upernet_l2vit_t_ade20k.py')],
                       capsys)
    assert 'data/ade/ADEChallengeData2016' in err
    assert 'images/training' in err and 'annotations/training' in err
    assert 'ADE20K' in err and 'upernet_l2vit_demo.py' in err


@pytest.mark.parametrize('content,message', [
    (b'', 'is empty'),
    (b'{"images": [{"id": 1, "file_name": "a.jpg"', 'not valid JSON'),
    (b'[1, 2]', 'not a COCO instances file'),
])
def test_corrupt_or_empty_annotation_file(tiny_data, tmp_path, capsys,
                                          content, message):
    data = tmp_path / 'data'
    subprocess.run(['cp', '-r', str(tiny_data / 'coco'), str(data)],
                   check=True)
    (data / 'annotations' / 'instances_train2017.json').write_bytes(content)
    cfg = _write_cfg(tmp_path / 'cfg.py', data.parent, f"""
        data_root = {str(data) + '/'!r}
        train_dataloader = dict(dataset=dict(data_root=data_root))
        """)
    err = _train_error([str(cfg)], capsys)
    assert message in err and 'instances_train2017.json' in err


def test_listed_images_missing(tiny_data, tmp_path, capsys):
    data = tmp_path / 'data'
    subprocess.run(['cp', '-r', str(tiny_data / 'coco'), str(data)],
                   check=True)
    for name in ('000000000002.jpg', '000000000005.jpg'):
        (data / 'train2017' / name).unlink()
    cfg = _write_cfg(tmp_path / 'cfg.py', data.parent, f"""
        data_root = {str(data) + '/'!r}
        train_dataloader = dict(dataset=dict(data_root=data_root))
        """)
    err = _train_error([str(cfg)], capsys)
    assert '2 of the 12 images' in err and '000000000002.jpg' in err


def test_label_map_out_of_range(tiny_data, tmp_path, capsys):
    import cv2
    ade = tmp_path / 'ade'
    subprocess.run(['cp', '-r', str(tiny_data / 'ade'), str(ade)],
                   check=True)
    seg_dir = ade / 'ADEChallengeData2016' / 'annotations' / 'training'
    bad = sorted(seg_dir.glob('*.png'))[1]
    label = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    label[:4, :4] = 9  # classes are 1..6 (+0 = other)
    cv2.imwrite(str(bad), label)
    cfg = tmp_path / 'seg.py'
    cfg.write_text(textwrap.dedent(f"""
        _base_ = [{str(SEG_DEMO_CFG)!r}]
        data_root = {str(ade / 'ADEChallengeData2016')!r}
        train_dataloader = dict(dataset=dict(data_root=data_root))
        val_dataloader = dict(dataset=dict(data_root=data_root))
        test_dataloader = val_dataloader
    """))
    err = _train_error([str(cfg)], capsys)
    assert bad.name in err and '[9]' in err and '1..6' in err

    # at load time (splits too large to scan), CheckSegLabels says the same
    from mmdet_l2vit.datasets import CheckSegLabels, LabelMapError
    check = CheckSegLabels(num_classes=6)
    seg = (label.astype('int64') - 1)
    seg[label == 0] = 255
    with pytest.raises(LabelMapError, match=r'\[9\].*1\.\.6'):
        check(dict(gt_seg_map=seg, seg_map_path=str(bad),
                   reduce_zero_label=True))
    ok = dict(gt_seg_map=seg.clip(0, 5), seg_map_path=str(bad))
    assert check(ok) is ok


def test_missing_checkpoints(tiny_data, tmp_path, capsys):
    cfg = _write_cfg(tmp_path / 'cfg.py', tiny_data, """
        model = dict(backbone=dict(init_cfg=dict(
            _delete_=True, type='Pretrained',
            checkpoint='checkpoints/nope.pth')))
        """)
    err = _train_error([str(cfg)], capsys)
    assert 'checkpoints/nope.pth' in err and 'README' in err
    assert 'init_cfg=None' in err
    cfg = _write_cfg(tmp_path / 'cfg2.py', tiny_data)
    err = _train_error([str(cfg), '--resume', str(tmp_path / 'x.pth')],
                       capsys)
    assert 'x.pth' in err and 'not found' in err
    from mmdet_l2vit.engine.cli import test
    assert test([str(cfg), str(tmp_path / 'gone.pth')]) == 2
    assert 'gone.pth' in capsys.readouterr().err


def test_amp_on_cpu_is_a_clear_error(tiny_data, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip('a GPU is present: --amp is valid')
    cfg = _write_cfg(tmp_path / 'cfg.py', tiny_data)
    err = _train_error([str(cfg), '--amp'], capsys)
    assert '--amp needs a CUDA GPU' in err


def test_bad_option_combinations_are_config_errors(tiny_data, tmp_path,
                                                   capsys):
    cfg = _write_cfg(tmp_path / 'cfg.py', tiny_data, """
        auto_scale_lr = dict(_delete_=True, enable=False)
        default_hooks = dict(visualization=None)
        """)
    err = _train_error([str(cfg), '--auto-scale-lr'], capsys)
    assert 'auto_scale_lr = dict(base_batch_size=N)' in err
    err = _train_error([str(tmp_path / 'nope.py')], capsys)
    assert 'nope.py' in err and 'not found' in err

    from mmdet_l2vit.engine.cli import test
    ckpt = tmp_path / 'model.pth'
    ckpt.write_bytes(b'')
    assert test([str(cfg), str(ckpt), '--show']) == 2
    assert 'visualization hook' in capsys.readouterr().err
    plain = _write_cfg(tmp_path / 'plain.py', tiny_data)
    assert test([str(plain), str(ckpt), '--out', 'preds.json']) == 2
    assert '.pkl' in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(tiny_data, tmp_path, monkeypatch):
    """Only the package's user-error types become ``error:`` lines."""
    from mmdet_l2vit.engine import cli

    def broken(*args, **kwargs):
        raise ValueError('a bug in a check')

    monkeypatch.setattr(cli, 'check_config_data', broken)
    cfg = _write_cfg(tmp_path / 'cfg.py', tiny_data)
    with pytest.raises(ValueError, match='a bug in a check'):
        cli.train([str(cfg)])


# ---- process groups on the CPU through mmengine's init_dist ---------------

INIT_GROUP = '''
import json
import os

import torch
import torch.distributed as dist
from mmengine.config import Config

from mmdet_l2vit.engine.preflight import adapt_for_cpu_distributed

cfg = Config(dict(
    launcher=os.environ['TEST_LAUNCHER'],
    model=dict(type='Net', norm_cfg=dict(type='SyncBN')),
    env_cfg=dict(dist_cfg=dict(backend='nccl', timeout=60))))
assert adapt_for_cpu_distributed(cfg)
total = torch.ones(3)
dist.all_reduce(total)
print('RESULT', json.dumps(dict(
    backend=dist.get_backend(), rank=dist.get_rank(),
    world_size=dist.get_world_size(), total=total.tolist(),
    norm=cfg.model.norm_cfg.type,
    device_ids=cfg.model_wrapper_cfg.device_ids,
    env={k: os.environ[k] for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR')})))
dist.destroy_process_group()
'''


def _init_group(tmp_path: Path, **env: str) -> dict:
    """Run :data:`INIT_GROUP` in a fresh process without a visible GPU."""
    result = _run([PYTHON, '-c', INIT_GROUP], CUDA_VISIBLE_DEVICES='',
                  MASTER_PORT=str(_free_port()), **env)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith('RESULT')]
    return json.loads(line[-1][len('RESULT '):])


#: What :data:`INIT_GROUP` prints for one process on 127.0.0.1.
ONE_GLOO_PROCESS = dict(
    backend='gloo', rank=0, world_size=1, total=[1.0] * 3, norm='BN',
    device_ids=None,
    env=dict(RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1'))


def test_torchrun_environment_initialises_a_gloo_group(tmp_path):
    got = _init_group(tmp_path, TEST_LAUNCHER='pytorch', RANK='0',
                      LOCAL_RANK='0', WORLD_SIZE='1',
                      MASTER_ADDR='127.0.0.1')
    assert got == ONE_GLOO_PROCESS


SLURM_ENV = dict(SLURM_PROCID='0', SLURM_NTASKS='1', SLURM_LOCALID='0',
                 SLURM_NODELIST='node-0')


def test_slurm_environment_without_scontrol(tmp_path):
    """mmengine reads the SLURM_* variables; without ``scontrol`` it needs
    MASTER_ADDR (it would otherwise take the shell's "not found" message as
    the address)."""
    no_tools = tmp_path / 'empty_path'
    no_tools.mkdir()
    got = _init_group(tmp_path, TEST_LAUNCHER='slurm', PATH=str(no_tools),
                      MASTER_ADDR='127.0.0.1', **SLURM_ENV)
    assert got == ONE_GLOO_PROCESS


def test_slurm_without_scontrol_or_master_addr_is_a_clear_error(
        tiny_data, tmp_path, capsys, monkeypatch):
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv('MASTER_ADDR', raising=False)
    monkeypatch.setenv('PATH', str(tmp_path))  # no scontrol here
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = _write_cfg(tmp_path / 'cfg.py', tiny_data)
    err = _train_error([str(cfg), '--launcher', 'slurm'], capsys)
    assert 'scontrol' in err and 'MASTER_ADDR' in err
    assert not torch.distributed.is_initialized()

    monkeypatch.delenv('SLURM_LOCALID')
    err = _train_error([str(cfg), '--launcher', 'slurm'], capsys)
    assert 'SLURM_LOCALID' in err and 'srun' in err
