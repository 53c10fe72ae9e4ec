"""Backbones of another checkout, for before/after runs in one process.

``tools/benchmark.py --baseline DIR`` times this checkout's backbones
against those of another checkout of the repository (e.g. a ``git worktree``
of an earlier commit), interleaved in the same process, so that a change is
measured under the same machine conditions as what it replaces. The other
checkout's package is copied to a temporary directory under the name
``mmdet_l2vit_baseline`` and imported with its registry decorator made a
no-op (its classes keep their names but are not registered) and without its
``engine`` (nothing of mmengine is changed) or its timm models.
"""
import importlib
import os.path as osp
import shutil
import sys
import tempfile
from types import ModuleType

#: Package name the other checkout is imported under.
BASELINE_PACKAGE = 'mmdet_l2vit_baseline'

_NO_REGISTRY = '''"""No-op registration (a baseline copy for benchmarks)."""


def register_into_toolboxes(registry_name='MODELS'):
    return lambda cls: cls
'''


def load_baseline_backbones(checkout: str) -> ModuleType:
    """Import ``CHECKOUT/mmdet_l2vit`` as :data:`BASELINE_PACKAGE`.

    Args:
        checkout (str): Root of another checkout of this repository.

    Returns:
        ModuleType: Its ``models.backbones`` module (``L2ViT``,
        ``InLinePVT``, ``InLineSwin``).
    """
    loaded = sys.modules.get(BASELINE_PACKAGE)
    if loaded is not None:
        if getattr(loaded, '__baseline_checkout__', None) != checkout:
            raise RuntimeError(f'a baseline from '
                               f'{loaded.__baseline_checkout__} is already '
                               f'loaded; cannot also load {checkout}.')
        return importlib.import_module(f'{BASELINE_PACKAGE}.models.backbones')
    source = osp.join(checkout, 'mmdet_l2vit')
    if not osp.isfile(osp.join(source, 'models', 'backbones', '__init__.py')):
        raise FileNotFoundError(
            f'{checkout!r} is not a checkout of mmdet_l2vit (no '
            f'{source}/models/backbones); make one with `git worktree add '
            'DIR COMMIT`.')
    root = tempfile.mkdtemp(prefix='mmdet_l2vit_baseline_')
    target = osp.join(root, BASELINE_PACKAGE)
    shutil.copytree(source, target,
                    ignore=shutil.ignore_patterns('__pycache__'))
    with open(osp.join(target, 'registry.py'), 'w') as f:
        f.write(_NO_REGISTRY)
    with open(osp.join(target, '__init__.py'), 'w') as f:
        f.write(f'__baseline_checkout__ = {checkout!r}\n')
    classification = osp.join(target, 'models', 'classification')
    if osp.isdir(classification):  # its timm entries would replace ours
        with open(osp.join(classification, '__init__.py'), 'w') as f:
            f.write('"""Not imported in a baseline copy."""\n')
    sys.path.insert(0, root)
    return importlib.import_module(f'{BASELINE_PACKAGE}.models.backbones')
