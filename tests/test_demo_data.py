"""The synthetic demo dataset: real layouts, deterministic, learnable."""
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmdet_l2vit.datasets import (SEG_CLASSES, SHAPE_CLASSES,
                                  demo_data_ready, ensure_demo_data,
                                  generate_demo_data, render_scene)
from mmdet_l2vit.datasets.shapes import mask_to_polygons

SIZES = {'train': 12, 'val': 5}


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('demo')
    generate_demo_data(str(root), seed=3, sizes=SIZES)
    return root


def _digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob('*')) if p.is_file()
    }


def test_layout_is_coco_and_ade(demo_root):
    coco = demo_root / 'coco'
    ade = demo_root / 'ade' / 'ADEChallengeData2016'
    for split, coco_dir, ade_dir in (('train', 'train2017', 'training'),
                                     ('val', 'val2017', 'validation')):
        ann = json.loads(
            (coco / 'annotations' / f'instances_{coco_dir}.json').read_text())
        assert {'images', 'annotations', 'categories'} <= set(ann)
        assert len(ann['images']) == SIZES[split]
        assert [c['name'] for c in ann['categories']] == list(SHAPE_CLASSES)
        for image in ann['images']:
            assert (coco / coco_dir / image['file_name']).is_file()
        assert len(list((ade / 'images' / ade_dir).glob('*.jpg'))) == \
            SIZES[split]
        assert len(list((ade / 'annotations' / ade_dir).glob('*.png'))) == \
            SIZES[split]


def test_same_seed_same_bytes_other_seed_other_data(demo_root, tmp_path):
    generate_demo_data(str(tmp_path / 'a'), seed=3, sizes=SIZES)
    assert _digest(tmp_path / 'a') == _digest(demo_root)
    generate_demo_data(str(tmp_path / 'b'), seed=4, sizes=SIZES)
    other = _digest(tmp_path / 'b')
    same = [k for k, v in _digest(demo_root).items()
            if k.endswith('.jpg') and other.get(k) == v]
    assert not same


def test_pycocotools_reads_polygons_that_match_label_maps(demo_root):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    coco = COCO(str(demo_root / 'coco' / 'annotations' /
                    'instances_train2017.json'))
    ade = demo_root / 'ade' / 'ADEChallengeData2016' / 'annotations' / \
        'training'
    for image in coco.dataset['images']:
        label_map = cv2.imread(str(ade / f'demo_{image["id"]:08d}.png'),
                               cv2.IMREAD_UNCHANGED)
        assert label_map.shape == (image['height'], image['width'])
        assert label_map.max() <= len(SEG_CLASSES)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image['id'])):
            mask = coco.annToMask(ann).astype(bool)
            # The polygon rasterises to the pixels labelled with its class.
            in_class = label_map[mask] == ann['category_id'] + 1
            assert in_class.mean() > 0.9
            assert mask.sum() == pytest.approx(ann['area'], rel=0.15)
            x, y, w, h = ann['bbox']
            ys, xs = np.nonzero(mask)
            assert xs.min() >= x - 1 and xs.max() <= x + w
            assert ys.min() >= y - 1 and ys.max() <= y + h
            rle = mask_utils.frPyObjects(ann['segmentation'],
                                         image['height'], image['width'])
            assert mask_utils.area(mask_utils.merge(rle)) > 0


def test_scenes_vary_in_classes_sizes_overlaps_and_clutter():
    scenes = [render_scene(np.random.default_rng([0, 9, i]))
              for i in range(40)]
    labels = [inst.label for s in scenes for inst in s.instances]
    assert set(labels) == set(range(len(SHAPE_CLASSES)))
    areas = [inst.mask.sum() for s in scenes for inst in s.instances]
    assert max(areas) > 8 * min(areas)
    sizes = {s.image.shape[:2] for s in scenes}
    assert len(sizes) > 3
    # overlaps: in some scenes a shape is partly hidden by a later one, so
    # the visible masks of two instances touch.
    def touching(scene) -> bool:
        masks = [cv2.dilate(i.mask.astype(np.uint8), np.ones((3, 3)))
                 for i in scene.instances]
        return any((masks[a] & masks[b]).any() for a in range(len(masks))
                   for b in range(a + 1, len(masks)))

    assert sum(map(touching, scenes)) >= 3
    assert sum(s.clutter.any() for s in scenes) > 10
    assert max(len(s.instances) for s in scenes) >= 4
    # background is not flat: texture and clutter make it non-trivial
    assert np.mean([s.image.std() for s in scenes]) > 20


def test_polygons_round_trip_through_pycocotools():
    from pycocotools import mask as mask_utils
    mask = np.zeros((40, 50), bool)
    mask[5:20, 10:30] = True
    mask[25:35, 3:9] = True  # a second part
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 2
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, 40, 50))
    decoded = mask_utils.decode(rle).astype(bool)
    assert (decoded == mask).all()


def test_ensure_generates_only_when_missing(tmp_path):
    root = str(tmp_path / 'd')
    assert not demo_data_ready(root, 0, SIZES)
    assert ensure_demo_data(root, 0, SIZES) is True
    assert demo_data_ready(root, 0, SIZES)
    assert ensure_demo_data(root, 0, SIZES) is False
    # an incomplete image folder is regenerated
    next((tmp_path / 'd' / 'coco' / 'val2017').glob('*.jpg')).unlink()
    assert not demo_data_ready(root, 0, SIZES)
    assert ensure_demo_data(root, 0, SIZES) is True
