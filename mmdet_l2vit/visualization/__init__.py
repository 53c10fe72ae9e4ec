"""Painting predictions: readable-scale visualizers and a contact sheet.

Importing this module registers :class:`UpscaledDetLocalVisualizer` into
mmdet's and :class:`UpscaledSegLocalVisualizer` into mmsegmentation's
``VISUALIZERS`` (each where its toolbox is installed), so configs say
``visualizer = dict(type='UpscaledDetLocalVisualizer', scale=3)``.
:func:`make_contact_sheet` tiles painted test pictures into one PNG.
"""
from . import upscaled
from .contact_sheet import make_contact_sheet
from .upscaled import *  # noqa: F401,F403

__all__ = ['make_contact_sheet'] + upscaled.__all__
