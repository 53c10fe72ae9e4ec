"""Write the synthetic demo dataset in the real COCO and ADE20K layouts.

Layout under ``root`` (default ``data/demo``)::

    coco/annotations/instances_{train,val}2017.json   COCO instances, polygons
    coco/{train,val}2017/000000000001.jpg ...
    ade/ADEChallengeData2016/images/{training,validation}/demo_00000001.jpg
    ade/ADEChallengeData2016/annotations/{training,validation}/*.png

The ADE20K-style label maps use ADE's convention: ``0`` is "other" (here:
thin clutter strokes, ignored with ``reduce_zero_label=True``), ``1`` is the
background and ``2..6`` are the shape classes. The same scenes feed both
tasks. Every file is a pure function of ``seed`` (the image index is part of
each scene's seed), so two runs with the same arguments write identical
bytes. A stamp file records the arguments; :func:`ensure_demo_data`
regenerates only when it is missing or different.
"""
import json
import os
import os.path as osp
import shutil
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from .shapes import SHAPE_CLASSES, SHAPE_PALETTE, mask_to_polygons, \
    render_scene

#: Semantic classes of the ADE20K-style maps (label value ``i + 1``).
SEG_CLASSES = ('background', ) + SHAPE_CLASSES
SEG_PALETTE = [(120, 120, 120)] + SHAPE_PALETTE
#: Split names: (COCO folder, ADE folder, seed stream).
SPLITS = {'train': ('train2017', 'training', 1),
          'val': ('val2017', 'validation', 2)}
STAMP = '.demo_data.json'
DEFAULT_ROOT = 'data/demo'
DEFAULT_SIZES = {'train': 800, 'val': 120}


def _scene_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def _coco_split(root: str, split: str, num: int, seed: int) -> Dict:
    """Render one split; write its images and the COCO and ADE files."""
    coco_dir, ade_dir, stream = SPLITS[split]
    img_dir = osp.join(root, 'coco', coco_dir)
    ade_root = osp.join(root, 'ade', 'ADEChallengeData2016')
    ade_img = osp.join(ade_root, 'images', ade_dir)
    ade_ann = osp.join(ade_root, 'annotations', ade_dir)
    for d in (img_dir, ade_img, ade_ann):
        os.makedirs(d, exist_ok=True)
    images: List[Dict] = []
    annotations: List[Dict] = []
    for index in range(num):
        scene = render_scene(_scene_rng(seed, stream, index))
        h, w = scene.image.shape[:2]
        image_id = index + 1
        file_name = f'{image_id:012d}.jpg'
        encoded = cv2.imencode('.jpg', scene.image,
                               [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
        encoded.tofile(osp.join(img_dir, file_name))
        encoded.tofile(osp.join(ade_img, f'demo_{image_id:08d}.jpg'))
        images.append(dict(id=image_id, file_name=file_name, height=h,
                           width=w))
        label_map = np.ones((h, w), np.uint8)  # 1 = background
        label_map[scene.clutter] = 0  # 0 = other (ignored)
        for inst in scene.instances:
            label_map[inst.mask] = inst.label + 2
            polygons = mask_to_polygons(inst.mask)
            if not polygons:
                continue
            ys, xs = np.nonzero(inst.mask)
            x0, y0 = float(xs.min()), float(ys.min())
            annotations.append(
                dict(id=len(annotations) + 1, image_id=image_id,
                     category_id=inst.label + 1, segmentation=polygons,
                     area=float(inst.mask.sum()),
                     bbox=[x0, y0, float(xs.max()) + 1 - x0,
                           float(ys.max()) + 1 - y0],
                     iscrowd=0))
        cv2.imwrite(osp.join(ade_ann, f'demo_{image_id:08d}.png'), label_map)
    coco = dict(
        info=dict(description='mmdet_l2vit synthetic shapes demo',
                  version='1.0', year=2025),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[
            dict(id=i + 1, name=name, supercategory='shape')
            for i, name in enumerate(SHAPE_CLASSES)
        ])
    ann_dir = osp.join(root, 'coco', 'annotations')
    os.makedirs(ann_dir, exist_ok=True)
    with open(osp.join(ann_dir, f'instances_{coco_dir}.json'), 'w') as f:
        json.dump(coco, f)
    return dict(images=len(images), instances=len(annotations))


def generate_demo_data(root: str = DEFAULT_ROOT,
                       seed: int = 0,
                       sizes: Optional[Dict[str, int]] = None) -> Dict:
    """Write the demo dataset under ``root``, replacing what is there.

    Args:
        root (str): Output directory. Default: 'data/demo'.
        seed (int): Seed of every scene. Default: 0.
        sizes (dict, optional): Images per split, e.g.
            ``{'train': 800, 'val': 120}`` (the default).

    Returns:
        dict: Per split, the number of images and instances.
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f'unknown splits {sorted(unknown)}; use '
                         f'{sorted(SPLITS)}')
    for sub in ('coco', 'ade'):
        shutil.rmtree(osp.join(root, sub), ignore_errors=True)
    summary = {
        split: _coco_split(root, split, num, seed)
        for split, num in sizes.items()
    }
    with open(osp.join(root, STAMP), 'w') as f:
        json.dump(dict(seed=seed, sizes=sizes, summary=summary), f)
    return summary


def demo_data_ready(root: str = DEFAULT_ROOT,
                    seed: int = 0,
                    sizes: Optional[Dict[str, int]] = None) -> bool:
    """Whether ``root`` holds demo data written with these arguments."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    try:
        with open(osp.join(root, STAMP)) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return False
    if stamp.get('seed') != seed or stamp.get('sizes') != sizes:
        return False
    for split in sizes:
        coco_dir, ade_dir, _ = SPLITS[split]
        expected: Sequence[str] = (
            osp.join(root, 'coco', 'annotations',
                     f'instances_{coco_dir}.json'),
            osp.join(root, 'coco', coco_dir),
            osp.join(root, 'ade', 'ADEChallengeData2016', 'annotations',
                     ade_dir))
        if not all(osp.exists(p) for p in expected):
            return False
        if len(os.listdir(osp.join(root, 'coco', coco_dir))) != sizes[split]:
            return False
    return True


def ensure_demo_data(root: str = DEFAULT_ROOT,
                     seed: int = 0,
                     sizes: Optional[Dict[str, int]] = None) -> bool:
    """Generate the demo data unless it is already there.

    Returns:
        bool: True if data was written, False if it was already present.
    """
    if demo_data_ready(root, seed, sizes):
        return False
    generate_demo_data(root, seed, sizes)
    return True
