"""Shared fixtures: the official reference data beside the repository.

``../shared/reference`` (relative to the repository root) holds
official-format checkpoints and the outputs the official code produced from
them. In a user's clone it is absent and the parity tests skip; under CI
(``CI=true``) a missing reference is a failure, never a skip.
"""
import os
from pathlib import Path

import pytest
import torch

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / 'shared' / \
    'reference'


def _require_reference(name: str) -> Path:
    path = REFERENCE_DIR / name
    if not path.is_file():
        message = (f'reference file {path} is missing (the parity data lives '
                   'in ../shared/reference beside the repository)')
        if os.environ.get('CI', '').lower() == 'true':
            pytest.fail(message + ' and CI=true: parity tests must run.')
        pytest.skip(message)
    return path


@pytest.fixture(scope='session')
def reference_dir() -> Path:
    """Directory with the reference data (fails under CI if absent)."""
    _require_reference('README.md')
    return REFERENCE_DIR


@pytest.fixture(scope='session')
def reference_file():
    """``reference_file(name) -> Path``; skips (or fails under CI) when the
    file is missing."""
    return _require_reference


@pytest.fixture
def engine_calls(monkeypatch):
    """A list that gets one entry (the backbone's class name) per forward
    the CPU inference engine computes (wraps the backbone base's
    ``run_cpu_inference`` and calls through)."""
    from mmdet_l2vit.models.backbones import base
    calls = []
    run = base.run_cpu_inference

    def spy(backbone, x):
        calls.append(type(backbone).__name__)
        return run(backbone, x)

    monkeypatch.setattr(base, 'run_cpu_inference', spy)
    return calls


def expected_engine_calls(inference: str, grad: bool = False) -> int:
    """Engine runs of one float32 CPU eval-mode forward: one with
    ``inference='auto'`` and autograd off, where this torch has the fused
    kernels the engine needs; none otherwise."""
    from mmdet_l2vit.models.cpu_inference.onednn import ONEDNN_AVAILABLE
    return int(inference == 'auto' and not grad and ONEDNN_AVAILABLE)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Parity numbers depend slightly on the thread count; pin it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield
    torch.set_num_threads(threads)


def require_toolbox(module: str) -> None:
    """Skip (or fail under CI) when a toolbox with compiled mmcv ops is not
    importable; ``module`` is e.g. ``'mmdet.models'``."""
    try:
        __import__(module)
    except ImportError as e:
        message = f'{module} is not importable ({e}); run tools/install.sh'
        if os.environ.get('CI', '').lower() == 'true':
            pytest.fail(message)
        pytest.skip(message)
