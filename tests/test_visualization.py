"""The upscaled visualizers (pixels drawn at 3x coordinates, GT | prediction
side by side), the demo configs' settings and the contact sheet."""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.structures import BaseDataElement, InstanceData, PixelData

from conftest import require_toolbox
from mmdet_l2vit.visualization.contact_sheet import (choose_evenly,
                                                     make_contact_sheet)
from mmdet_l2vit.visualization.upscaled import (upscale_data_sample,
                                                upscale_image)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCALE = 3
H, W = 40, 50  # synthetic image (height, width)
RED = (255, 0, 0)  # RGB, the class-0 palette colour


def is_red(pixel: np.ndarray) -> bool:
    """Red drawn at alpha 0.8 (mask colours are jittered by up to 64)."""
    r, g, b = (int(v) for v in pixel)
    return r >= 150 and g <= 70 and b <= 70


def is_black(pixel: np.ndarray) -> bool:
    return int(pixel.max()) <= 30


# --- the upscaling of a data sample (plain mmengine, no toolbox) -----------

def test_upscale_data_sample_scales_boxes_masks_and_maps_not_the_input():
    sample = BaseDataElement(metainfo=dict(img_shape=(4, 5)))
    mask = torch.zeros(1, 4, 5, dtype=torch.bool)
    mask[0, 1, 2] = True
    sample.pred_instances = InstanceData(
        bboxes=torch.tensor([[1., 2., 3., 4.]]), labels=torch.tensor([2]),
        masks=mask)
    sample.gt_sem_seg = PixelData(data=torch.arange(20).view(1, 4, 5))

    up = upscale_data_sample(sample, SCALE)

    assert up.pred_instances.bboxes.tolist() == [[3., 6., 9., 12.]]
    assert up.pred_instances.labels.tolist() == [2]
    masks = up.pred_instances.masks
    assert masks.shape == (1, 12, 15) and masks.dtype == torch.bool
    assert masks.sum() == 9 and masks[0, 3:6, 6:9].all()
    seg = up.gt_sem_seg.data
    assert seg.shape == (1, 12, 15) and seg.dtype == torch.int64
    assert seg[0, 3:6, 6:9].unique().tolist() == [7]  # pixel (1, 2) = 7
    # the input is unchanged
    assert sample.pred_instances.bboxes.tolist() == [[1., 2., 3., 4.]]
    assert sample.gt_sem_seg.data.shape == (1, 4, 5)


def test_upscale_image_nearest_and_bilinear():
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 0] = 90
    nearest = upscale_image(image, SCALE)
    assert nearest.shape == (6, 6, 3)
    assert (nearest[:3, :3] == 90).all() and (nearest[3:, 3:] == 0).all()
    bilinear = upscale_image(image, SCALE, 'bilinear')
    assert bilinear.shape == (6, 6, 3) and 0 < bilinear[2, 2, 0] < 90
    with pytest.raises(ValueError):
        upscale_image(image, 1.5)
    with pytest.raises(ValueError):
        upscale_image(image, SCALE, 'bicubic')


# --- mmdet: UpscaledDetLocalVisualizer --------------------------------------

def det_visualizer(name: str):
    require_toolbox('mmdet.visualization')
    from mmdet.registry import VISUALIZERS
    visualizer = VISUALIZERS.build(
        dict(type='UpscaledDetLocalVisualizer', _scope_='mmdet', name=name,
             scale=SCALE))
    visualizer.dataset_meta = dict(classes=('thing', ), palette=[RED])
    return visualizer


def det_sample():
    """GT box (10, 5)-(30, 25); a confident predicted mask rows 20-29,
    columns 5-14 in box (5, 20)-(15, 30), and an unconfident box."""
    from mmdet.structures import DetDataSample
    sample = DetDataSample()
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[10., 5., 30., 25.]]), labels=torch.tensor([0]))
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    masks[0, 20:30, 5:15] = True
    sample.pred_instances = InstanceData(
        bboxes=torch.tensor([[5., 20., 15., 30.], [35., 2., 48., 12.]]),
        labels=torch.tensor([0, 0]), scores=torch.tensor([0.9, 0.4]),
        masks=masks)
    return sample


def test_det_visualizer_draws_gt_box_at_3x_coordinates():
    visualizer = det_visualizer('test_upscaled_det_box')
    assert type(visualizer).__name__ == 'UpscaledDetLocalVisualizer'
    image = np.zeros((H, W, 3), np.uint8)
    visualizer.add_datasample('box', image, det_sample(), draw_pred=False)
    drawn = visualizer.get_image()
    assert drawn.shape == (SCALE * H, SCALE * W, 3)
    # box edges at 3x: x = 30 and 90, y = 15 and 75
    for y, x in [(45, 30), (45, 90), (75, 60), (15, 75)]:
        assert is_red(drawn[y, x]), (y, x, drawn[y, x])
    # inside the box, and where the 1x box's edges would be: nothing
    for y, x in [(45, 60), (15, 10), (10, 20), (45, 100)]:
        assert is_black(drawn[y, x]), (y, x, drawn[y, x])


def test_det_visualizer_draws_mask_at_3x_and_keeps_score_threshold():
    visualizer = det_visualizer('test_upscaled_det_mask')
    image = np.zeros((H, W, 3), np.uint8)
    visualizer.add_datasample('mask', image, det_sample(), draw_gt=False,
                              pred_score_thr=0.5)
    drawn = visualizer.get_image()
    assert drawn.shape == (SCALE * H, SCALE * W, 3)
    # mask rows 60-89, columns 15-44 at 3x (away from the label, top left)
    for y, x in [(82, 25), (85, 40), (80, 35)]:
        assert is_red(drawn[y, x]), (y, x, drawn[y, x])
    # the 1x mask's place, and the right of the 3x mask: nothing
    assert is_black(drawn[25, 10]) and is_black(drawn[80, 55])
    # the 0.4 box (left edge x = 105, y 6-36) is below the threshold
    assert is_black(drawn[21, 105])
    visualizer.add_datasample('mask', image, det_sample(), draw_gt=False,
                              pred_score_thr=0.3)
    assert is_red(visualizer.get_image()[21, 105])


def test_det_visualizer_gt_beside_prediction():
    visualizer = det_visualizer('test_upscaled_det_both')
    image = np.zeros((H, W, 3), np.uint8)
    visualizer.add_datasample('both', image, det_sample(),
                              pred_score_thr=0.5)
    drawn = visualizer.get_image()
    assert drawn.shape == (SCALE * H, 2 * SCALE * W, 3)
    right = SCALE * W
    assert is_red(drawn[45, 30]) and is_black(drawn[82, 25])  # GT
    assert is_red(drawn[82, right + 25]) and is_black(drawn[45, right + 30])


# --- mmseg: UpscaledSegLocalVisualizer --------------------------------------

def seg_sample(height: int, width: int):
    """GT class 1 in rows 2-7, columns 3-10; prediction class 1 in rows
    10-15, columns 15-25; the rest ignored (255)."""
    from mmseg.structures import SegDataSample
    gt = torch.full((1, height, width), 255, dtype=torch.int64)
    gt[0, 2:8, 3:11] = 1
    pred = torch.full((1, height, width), 255, dtype=torch.int64)
    pred[0, 10:16, 15:26] = 1
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=gt)
    sample.pred_sem_seg = PixelData(data=pred)
    return sample


def test_seg_visualizer_paints_gt_beside_prediction_at_3x(tmp_path):
    require_toolbox('mmseg.visualization')
    from mmseg.registry import VISUALIZERS

    # saved through a LocalVisBackend, as SegVisualizationHook saves them
    visualizer = VISUALIZERS.build(
        dict(type='UpscaledSegLocalVisualizer', _scope_='mmseg',
             name='test_upscaled_seg',
             scale=SCALE, vis_backends=[dict(type='LocalVisBackend')],
             save_dir=str(tmp_path)))
    assert type(visualizer).__name__ == 'UpscaledSegLocalVisualizer'
    visualizer.dataset_meta = dict(classes=('background', 'shape'),
                                   palette=[(120, 120, 120), (0, 200, 0)])
    height, width = 20, 30
    image = np.zeros((height, width, 3), np.uint8)
    sample = seg_sample(height, width)
    saved = tmp_path / 'vis_data' / 'vis_image'

    # as SegVisualizationHook calls it (GT and prediction, class labels)
    visualizer.add_datasample('labels', image, sample)
    drawn = cv2.imread(str(saved / 'labels_0.png'))
    assert drawn.shape == (SCALE * height, 2 * SCALE * width, 3)

    visualizer.add_datasample('plain', image, sample, with_labels=False)
    drawn = cv2.imread(str(saved / 'plain_0.png'))[..., ::-1]  # RGB
    assert drawn.shape == (SCALE * height, 2 * SCALE * width, 3)
    green = np.array([0, 160, 0])  # alpha 0.8 over black
    right = SCALE * width
    # GT (left): rows 6-23, columns 9-32 at 3x
    assert np.abs(drawn[15, 20].astype(int) - green).max() <= 1
    assert np.abs(drawn[6, 9].astype(int) - green).max() <= 1
    assert is_black(drawn[5, 9]) and is_black(drawn[40, 60])
    # prediction (right): rows 30-47, columns 45-77 at 3x
    assert np.abs(drawn[40, right + 60].astype(int) - green).max() <= 1
    assert np.abs(drawn[47, right + 77].astype(int) - green).max() <= 1
    assert is_black(drawn[48, right + 77]) and is_black(drawn[15, right + 20])


# --- the demo configs --------------------------------------------------------

def test_demo_configs_use_the_upscaled_visualizers():
    require_toolbox('mmdet.visualization')
    require_toolbox('mmseg.visualization')
    from mmengine.config import Config
    det = Config.fromfile(
        osp.join(ROOT, 'configs/demo/maskrcnn_l2vit_demo.py'))
    assert det.visualizer.type == 'UpscaledDetLocalVisualizer'
    assert det.visualizer.scale == SCALE
    assert det.visualizer.vis_backends == [dict(type='LocalVisBackend')]
    hook = det.default_hooks.visualization
    assert (hook.type, hook.score_thr) == ('DetVisualizationHook', 0.5)
    seg = Config.fromfile(
        osp.join(ROOT, 'configs/demo/upernet_l2vit_demo.py'))
    assert seg.visualizer.type == 'UpscaledSegLocalVisualizer'
    assert seg.visualizer.scale == SCALE
    assert seg.visualizer.vis_backends == [dict(type='LocalVisBackend')]
    hook = seg.default_hooks.visualization
    assert (hook.type, hook.interval) == ('SegVisualizationHook', 1)


# --- the contact sheet -------------------------------------------------------

def test_choose_evenly_is_deterministic_and_spans_the_list():
    assert choose_evenly(list(range(5)), 4) == [0, 1, 3, 4]
    assert choose_evenly(list(range(40)), 12) == [
        0, 4, 7, 11, 14, 18, 21, 25, 28, 32, 35, 39]
    assert choose_evenly(list(range(3)), 12) == [0, 1, 2]


def test_contact_sheet_size_and_tiles(tmp_path):
    pictures = tmp_path / 'predictions'
    pictures.mkdir()
    colours = {}
    for i, name in enumerate(['e.png', 'a.png', 'd.jpg', 'b.png', 'c.png']):
        size = (30, 60) if i % 2 == 0 else (24, 50)
        colour = (10 * i, 200 - 10 * i, 40)
        cv2.imwrite(str(pictures / name),
                    np.full((*size, 3), colour, np.uint8))
        colours[name] = colour
    (pictures / 'notes.txt').write_text('not a picture')
    out = tmp_path / 'sheet' / 'contact_sheet.png'

    chosen = make_contact_sheet(str(pictures), str(out), num=4, columns=3)

    assert [osp.basename(p) for p in chosen] == ['a.png', 'b.png', 'd.jpg',
                                                 'e.png']
    sheet = cv2.imread(str(out))
    # caption 36 + padding 8 + 2 rows of (30 + 8); 8 + 3 columns of (60 + 8)
    assert sheet.shape == (36 + 8 + 2 * 38, 8 + 3 * 68, 3)
    # tile centres: a.png (row 0, column 0), b.png (row 0, column 1)
    assert tuple(sheet[36 + 8 + 15, 8 + 30]) == colours['a.png']
    assert tuple(sheet[36 + 8 + 15, 8 + 68 + 30]) == colours['b.png']
    assert tuple(sheet[36 + 8 + 38 + 15, 8 + 30]) == colours['e.png']
    caption = sheet[:36]
    assert (caption.min(axis=2) < 128).any()  # there is text
    assert (sheet[36 + 8 + 38 + 15, 8 + 2 * 68 + 30] == 255).all()  # empty

    chosen = make_contact_sheet(str(pictures), str(out), num=2, columns=3,
                                caption='', tile_scale=0.5)
    assert len(chosen) == 2
    # 2 pictures in 2 columns, cells 15 x 30, no caption row
    assert cv2.imread(str(out)).shape == (8 + 23, 8 + 2 * 38, 3)


def test_contact_sheet_without_pictures_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        make_contact_sheet(str(tmp_path), str(tmp_path / 'sheet.png'))
    with pytest.raises(FileNotFoundError):
        make_contact_sheet(str(tmp_path / 'missing'), str(tmp_path / 's.png'))
