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
