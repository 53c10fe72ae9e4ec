"""Synthetic scenes of textured shapes for the demo dataset (numpy + cv2).

A scene is a textured, cluttered background with a few shape instances of
:data:`SHAPE_CLASSES` drawn on top of each other. Everything is a pure
function of a ``numpy.random.Generator``, so a seed fixes every pixel.

Each instance keeps its *visible* mask (later shapes occlude earlier ones),
which is what the COCO polygons and the semantic label map are made from.
"""
from typing import List, NamedTuple, Tuple

import cv2
import numpy as np

#: Instance classes, in category-id order (COCO ids start at 1).
SHAPE_CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle', 'star',
                                  'cross')
#: A palette for the visualizer, one RGB colour per class.
SHAPE_PALETTE: List[Tuple[int, int, int]] = [(220, 20, 60), (0, 130, 200),
                                             (60, 180, 75), (255, 165, 0),
                                             (145, 30, 180)]


class Instance(NamedTuple):
    """One drawn shape: its class index (0-based) and visible mask."""

    label: int
    mask: np.ndarray  # (H, W) bool, the visible part only


class Scene(NamedTuple):
    """A rendered image (H, W, 3 uint8, BGR as cv2 writes it), its shape
    instances (bottom to top) and a mask of unlabelled clutter strokes."""

    image: np.ndarray
    instances: List[Instance]
    clutter: np.ndarray  # (H, W) bool: thin strokes, 'other' in ADE terms


def _polygon(label: int, center: np.ndarray, size: float, angle: float,
             rng: np.random.Generator) -> np.ndarray:
    """Outline of a shape as an (N, 2) float array in pixel coordinates."""
    name = SHAPE_CLASSES[label]
    r = size / 2.
    if name == 'circle':
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        aspect = rng.uniform(0.85, 1.0)
        pts = np.stack([r * np.cos(t), aspect * r * np.sin(t)], 1)
    elif name == 'square':
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * r * 0.8
    elif name == 'triangle':
        t = np.array([90, 210, 330]) * np.pi / 180
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif name == 'star':
        t = np.arange(10) * np.pi / 5 + np.pi / 2
        radius = np.where(np.arange(10) % 2 == 0, r, r * 0.42)
        pts = np.stack([radius * np.cos(t), radius * np.sin(t)], 1)
    else:  # cross: a plus sign with arms of width 2 * a
        a = r * 0.33
        pts = np.array([[-a, -r], [a, -r], [a, -a], [r, -a], [r, a], [a, a],
                        [a, r], [-a, r], [-a, a], [-r, a], [-r, -a],
                        [-a, -a]])
    rot = np.array([[np.cos(angle), -np.sin(angle)],
                    [np.sin(angle), np.cos(angle)]])
    return pts @ rot.T + center


def _texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A (h, w, 3) float texture: solid, stripes, checker, gradient or
    noise around a random colour."""
    base = rng.uniform(0, 255, 3)
    kind = rng.integers(5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        pattern = np.zeros((h, w), np.float32)
    elif kind == 1:
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(4, 10)
        phase = xx * np.cos(theta) + yy * np.sin(theta)
        pattern = np.sign(np.sin(2 * np.pi * phase / period))
    elif kind == 2:
        cell = int(rng.integers(3, 8))
        pattern = ((xx // cell + yy // cell) % 2) * 2 - 1.
    elif kind == 3:
        theta = rng.uniform(0, 2 * np.pi)
        pattern = (xx * np.cos(theta) + yy * np.sin(theta)) / max(h, w)
        pattern = 2 * (pattern - pattern.min()) / (np.ptp(pattern) + 1e-6) - 1
    else:
        pattern = rng.uniform(-1, 1, (h, w)).astype(np.float32)
    second = rng.uniform(0, 255, 3)
    mix = (pattern[..., None] + 1) / 2 * rng.uniform(0.2, 0.6)
    return base * (1 - mix) + second * mix


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A low-contrast textured background with a colour gradient."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    t = (xx / w * rng.uniform(-1, 1) + yy / h * rng.uniform(-1, 1))
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    img += rng.normal(0, rng.uniform(3, 12), (h, w, 1))
    return img


def _draw_clutter(img: np.ndarray, rng: np.random.Generator,
                  num_blobs: int, num_strokes: int) -> np.ndarray:
    """Draw unlabelled blobs (irregular polygons, part of the background)
    and thin strokes; return the stroke mask."""
    h, w = img.shape[:2]
    for _ in range(num_blobs):
        n = int(rng.integers(5, 9))
        center = rng.uniform([0, 0], [w, h])
        radius = rng.uniform(3, 9) * rng.uniform(0.5, 1.5, n)
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        pts = np.stack([radius * np.cos(t), radius * np.sin(t)], 1) + center
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)],
                     rng.uniform(0, 255, 3).tolist())
    strokes = np.zeros((h, w), np.uint8)
    for _ in range(num_strokes):
        p0 = rng.uniform([0, 0], [w, h]).astype(np.int32)
        p1 = (p0 + rng.uniform(-40, 40, 2)).astype(np.int32)
        color = rng.uniform(0, 255, 3).tolist()
        cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1),
                 color, 1)
        cv2.line(strokes, tuple(int(v) for v in p0),
                 tuple(int(v) for v in p1), 1, 1)
    return strokes.astype(bool)


def render_scene(rng: np.random.Generator,
                 size_range: Tuple[int, int] = (128, 192),
                 max_objects: int = 8,
                 object_size: Tuple[float, float] = (16., 56.),
                 min_visible: float = 0.45) -> Scene:
    """Render one scene.

    Args:
        rng (numpy.random.Generator): Source of all randomness.
        size_range (tuple[int, int]): Range of image height and width
            (each drawn independently, rounded to a multiple of 8).
        max_objects (int): At most this many shapes (at least 2).
        object_size (tuple[float, float]): Range of shape diameters (px).
        min_visible (float): A shape that keeps less than this fraction of
            its area visible after later shapes are drawn is removed and
            redrawn elsewhere; every instance is recognisable.

    Returns:
        Scene: The image, the instances and the clutter-stroke mask.
    """
    h, w = (int(v) // 8 * 8 for v in rng.integers(size_range[0],
                                                   size_range[1] + 1, 2))
    img = _background(h, w, rng)
    clutter = _draw_clutter(img, rng, int(rng.integers(2, 7)),
                            int(rng.integers(0, 5)))
    num = int(rng.integers(2, max_objects + 1))
    labels: List[int] = []
    full_masks: List[np.ndarray] = []
    for _ in range(num * 3):  # a few retries for rejected placements
        if len(labels) == num:
            break
        label = int(rng.integers(len(SHAPE_CLASSES)))
        size = rng.uniform(*object_size)
        center = rng.uniform([size * 0.3, size * 0.3],
                             [w - size * 0.3, h - size * 0.3])
        pts = _polygon(label, center, size, rng.uniform(0, 2 * np.pi), rng)
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
        mask = mask.astype(bool)
        if mask.sum() < 0.5 * np.pi * (size / 2)**2 * 0.35:
            continue  # mostly outside the image
        # Drawn on top, the new shape must leave every earlier one
        # recognisable.
        if any(vis.sum() < min_visible * m.sum()
               for vis, m in zip(_visible(full_masks + [mask]), full_masks)):
            continue
        labels.append(label)
        full_masks.append(mask)
    for label, mask in zip(labels, full_masks):
        tex = _texture(h, w, rng)
        img[mask] = tex[mask]
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    instances = [
        Instance(label, vis) for label, vis in zip(labels,
                                                   _visible(full_masks))
    ]
    for mask in full_masks:  # strokes under a shape are hidden
        clutter &= ~mask
    return Scene(img, instances, clutter)


def _visible(masks: List[np.ndarray]) -> List[np.ndarray]:
    """Visible part of each mask when drawn bottom to top."""
    out = []
    for i, mask in enumerate(masks):
        vis = mask.copy()
        for later in masks[i + 1:]:
            vis &= ~later
        out.append(vis)
    return out


def mask_to_polygons(mask: np.ndarray,
                     min_area: float = 4.) -> List[List[float]]:
    """COCO polygons (``[x0, y0, x1, y1, ...]`` lists in continuous pixel
    coordinates) of the outer contours of a binary mask.

    Contours are traced on the mask upsampled 2x, so they run a quarter
    pixel inside the pixel edges instead of through the boundary pixels'
    centres: pycocotools rasterises them back to the same mask (mean IoU
    0.998 on demo scenes, against 0.89 for plain contours). Fragments
    smaller than ``min_area`` pixels are dropped.
    """
    big = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2,
                     interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    return [((c.reshape(-1, 2) + 0.5) / 2).flatten().tolist()
            for c in contours
            if len(c) >= 3 and cv2.contourArea(c) >= 4 * min_area]
