"""Register one class into mmdet's and mmsegmentation's registries.

Importing ``mmdet.registry`` / ``mmseg.registry`` is cheap (it does not import
``mmdet.models``), so ``import mmdet_l2vit`` stays light. Each toolbox is
optional: a missing one is skipped, so the backbones also work with only
mmdet, only mmsegmentation, or neither (plain ``torch`` use).
"""
import importlib
from typing import Callable, List, TypeVar

from mmengine.registry import Registry

T = TypeVar('T', bound=type)

#: Toolbox registry modules tried, in order.
TOOLBOX_REGISTRIES = ('mmdet.registry', 'mmseg.registry')


def _toolbox_registries(attr: str) -> List[Registry]:
    """The registries named ``attr`` of the installed toolboxes.

    Args:
        attr (str): Registry attribute, e.g. ``'MODELS'``.

    Returns:
        list[Registry]: One per importable module of
        :data:`TOOLBOX_REGISTRIES`, in that order.
    """
    registries = []
    for module_name in TOOLBOX_REGISTRIES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        registries.append(getattr(module, attr))
    return registries


def register_into_toolboxes(registry_name: str = 'MODELS'
                            ) -> Callable[[T], T]:
    """Class decorator: register the class into every installed toolbox.

    Args:
        registry_name (str): Name of the registry attribute in
            ``mmdet.registry`` / ``mmseg.registry``. Default: 'MODELS'.

    Returns:
        Callable: The decorator, which returns the class unchanged.
    """

    def decorator(cls: T) -> T:
        for registry in _toolbox_registries(registry_name):
            # ``module_dict`` rather than ``get``: ``get`` would import the
            # whole ``mmdet.models`` package (and its compiled ops).
            existing = registry.module_dict.get(cls.__name__)
            if existing is not None and existing is not cls:
                raise KeyError(
                    f'{cls.__name__} is already registered in '
                    f'{registry.scope}.{registry_name} by '
                    f'{existing.__module__}; refusing to shadow it.')
            registry.register_module(module=cls, force=True)
        return cls

    return decorator


__all__: List[str] = ['register_into_toolboxes', 'TOOLBOX_REGISTRIES']
