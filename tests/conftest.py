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
def small_chunks(monkeypatch):
    """``small_chunks(min_tokens)``: make CPU inference use the smallest
    chunks and bands (at least ``min_tokens`` tokens), so every banded or
    chunked block runs in several pieces."""
    from mmdet_l2vit.models.layers import chunked

    def shrink(min_tokens: int) -> None:
        monkeypatch.setattr(chunked, 'CHUNK_BYTES', 1)
        monkeypatch.setattr(chunked, 'MIN_CHUNK_TOKENS', min_tokens)

    return shrink


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
