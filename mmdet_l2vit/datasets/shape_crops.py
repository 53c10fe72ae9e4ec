"""Single-shape classification crops of the synthetic scenes (demo
pretraining).

Each crop is a square window around one shape instance of a small scene
rendered by :func:`~mmdet_l2vit.datasets.shapes.render_scene`, resized to
``crop_size``: the textured background and the clutter stay, the shape
fills most of the window and other shapes cover at most
``1 - min_purity`` of the shape pixels in it. The label is the instance's
class (:data:`SHAPE_CLASSES` order).

Scene ``j`` of a split is rendered from ``(seed, stream, j)`` as in
:mod:`.demo_data`, whose detection scenes use streams 1 (train) and 2 (val);
the crops use their own streams (:data:`CROP_STREAMS`), so held-out crops
never share a scene with the training crops or with the detection data.
The classes are balanced (crop ``k`` has label ``k % 5``) and the first
``n`` crops of a split do not depend on how many are asked for.

Crops are RGB, the order the detection models see after their data
preprocessor (mmdet reads the BGR JPEGs and ``bgr_to_rgb=True``), and
:func:`normalize_crops` uses the same ImageNet mean / std, so pretrained
features transfer to the detection and segmentation demos.
"""
import collections
import functools
from typing import Deque, Iterator, List, NamedTuple, Optional, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .shapes import SHAPE_CLASSES, render_scene

#: Seed streams of the crop splits (the detection data uses 1 and 2).
CROP_STREAMS = {'train': 3, 'heldout': 4}
#: ImageNet mean / std in RGB order, as in the detection configs.
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)

#: Scenes for crops: few shapes, each at least 85% visible, on the
#: detection data's background, clutter and object sizes.
_SCENE_KWARGS = dict(size_range=(96, 128), max_objects=3,
                     object_size=(16., 56.), min_visible=0.85)


class ShapeCrops(NamedTuple):
    """Crops ``(N, S, S, 3)`` uint8 RGB and their labels ``(N,)`` int64."""

    images: np.ndarray
    labels: np.ndarray


def _crop_window(mask: np.ndarray, image_hw: Tuple[int, int],
                 rng: np.random.Generator) -> Tuple[int, int, int]:
    """A square window ``(x0, y0, side)`` around a mask's bounding box:
    1.15-1.4 times its longer side, centre jittered by up to 8% of the
    side, shifted to lie inside the image."""
    ys, xs = np.nonzero(mask)
    h, w = image_hw
    extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
    side = int(np.clip(round(extent * rng.uniform(1.15, 1.4)), 24,
                       min(h, w)))
    cx, cy = ((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2)
    cx, cy = np.array([cx, cy]) + rng.uniform(-0.08, 0.08, 2) * side
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    return x0, y0, side


def scene_crops(rng: np.random.Generator,
                crop_size: int = 64,
                min_purity: float = 0.8) -> List[Tuple[np.ndarray, int]]:
    """Render one scene and cut a crop around each of its clean instances.

    An instance is clean when, of all shape pixels in its window, at least
    ``min_purity`` belong to it.

    Args:
        rng (numpy.random.Generator): Source of all randomness.
        crop_size (int): Output side in pixels. Default: 64.
        min_purity (float): Least fraction of the window's shape pixels
            that belong to the labelled shape. Default: 0.8.

    Returns:
        list[tuple[np.ndarray, int]]: ``(S, S, 3)`` uint8 RGB crops and
        their labels, bottom to top (possibly empty).
    """
    scene = render_scene(rng, **_SCENE_KWARGS)
    shapes = np.zeros(scene.image.shape[:2], bool)
    for inst in scene.instances:
        shapes |= inst.mask
    crops = []
    for inst in scene.instances:
        if not inst.mask.any():
            continue
        x0, y0, side = _crop_window(inst.mask, scene.image.shape[:2], rng)
        window = np.s_[y0:y0 + side, x0:x0 + side]
        if inst.mask[window].sum() < min_purity * shapes[window].sum():
            continue
        crop = cv2.resize(scene.image[window], (crop_size, crop_size),
                          interpolation=cv2.INTER_AREA)
        crops.append((np.ascontiguousarray(crop[..., ::-1]),  # BGR -> RGB
                      inst.label))
    return crops


@functools.lru_cache(maxsize=8)
def make_shape_crops(num: int,
                     split: str = 'train',
                     seed: int = 0,
                     crop_size: int = 64) -> ShapeCrops:
    """``num`` class-balanced crops of a split, cached in memory
    (read-only arrays).

    Scene ``j`` of a split is rendered from
    ``np.random.default_rng([seed, stream, j])``. Crop ``k`` has label
    ``k % 5``: it is the next unused clean crop of that class in scene
    order, so the first ``n`` crops do not depend on ``num``.

    Args:
        num (int): Number of crops.
        split (str): ``'train'`` or ``'heldout'`` (:data:`CROP_STREAMS`).
        seed (int): Dataset seed. Default: 0.
        crop_size (int): Crop side in pixels. Default: 64.

    Returns:
        ShapeCrops: Images ``(num, S, S, 3)`` uint8 RGB and labels.
    """
    if split not in CROP_STREAMS:
        raise ValueError(f'unknown split {split!r}; use '
                         f'{sorted(CROP_STREAMS)}')
    stream = CROP_STREAMS[split]
    num_classes = len(SHAPE_CLASSES)
    images = np.empty((num, crop_size, crop_size, 3), np.uint8)
    labels = np.arange(num, dtype=np.int64) % num_classes
    queues: List[Deque[np.ndarray]] = [
        collections.deque() for _ in range(num_classes)
    ]
    scene = 0
    for k in range(num):
        queue = queues[labels[k]]
        while not queue:
            rng = np.random.default_rng([seed, stream, scene])
            for crop, label in scene_crops(rng, crop_size):
                queues[label].append(crop)
            scene += 1
        images[k] = queue.popleft()
    images.setflags(write=False)
    labels.setflags(write=False)
    return ShapeCrops(images, labels)


def normalize_crops(images: torch.Tensor) -> torch.Tensor:
    """``(N, S, S, 3)`` uint8 RGB to ``(N, 3, S, S)`` float32, normalised
    with the ImageNet mean / std."""
    mean = images.new_tensor(IMAGENET_MEAN_RGB, dtype=torch.float32)
    std = images.new_tensor(IMAGENET_STD_RGB, dtype=torch.float32)
    x = (images.float() - mean) / std
    return x.permute(0, 3, 1, 2).contiguous()


def random_flips(images: torch.Tensor,
                 generator: Optional[torch.Generator] = None
                 ) -> torch.Tensor:
    """Per-sample random horizontal flip, vertical flip and transpose of a
    ``(N, S, S, C)`` batch (the 8 symmetries of the square; every shape
    class is closed under them)."""
    n = images.shape[0]
    flags = torch.rand(3, n, generator=generator) < 0.5
    out = images
    for flag, op in zip(flags, (lambda x: x.flip(2), lambda x: x.flip(1),
                                lambda x: x.transpose(1, 2))):
        out = torch.where(flag.view(n, 1, 1, 1), op(out), out)
    return out


def iterate_batches(crops: ShapeCrops,
                    batch_size: int,
                    generator: torch.Generator,
                    augment: bool = True
                    ) -> Iterator[Tuple[torch.Tensor, torch.Tensor, int]]:
    """Endless shuffled batches, reshuffled every epoch, last partial batch
    of an epoch dropped.

    Yields:
        tuple[Tensor, Tensor, int]: Normalised images ``(B, 3, S, S)``,
        labels ``(B,)`` and the 0-based epoch the batch belongs to.
    """
    images = torch.from_numpy(np.asarray(crops.images).copy())
    labels = torch.from_numpy(np.asarray(crops.labels).copy())
    if len(labels) < batch_size:
        raise ValueError(f'{len(labels)} crops are fewer than one batch '
                         f'({batch_size})')
    epoch = 0
    while True:
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            batch = images[idx]
            if augment:
                batch = random_flips(batch, generator)
            yield normalize_crops(batch), labels[idx], epoch
        epoch += 1


class ShapeCropDataset(Dataset):
    """The crops as a map-style dataset of ``(image, label)`` pairs.

    Args:
        num (int): Number of crops.
        split (str): ``'train'`` or ``'heldout'``. Default: 'train'.
        seed (int): Dataset seed. Default: 0.
        crop_size (int): Crop side in pixels. Default: 64.
        augment (bool): Random flips / transposes (the global torch RNG
            draws them). Default: False.
    """

    classes = SHAPE_CLASSES

    def __init__(self,
                 num: int,
                 split: str = 'train',
                 seed: int = 0,
                 crop_size: int = 64,
                 augment: bool = False) -> None:
        self.crops = make_shape_crops(num, split, seed, crop_size)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.crops.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.crops.images[index:index + 1].copy())
        if self.augment:
            image = random_flips(image)
        return normalize_crops(image)[0], int(self.crops.labels[index])
