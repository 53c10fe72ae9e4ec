"""The demo pretraining crops: deterministic, class-balanced, split by
seed stream, batched normalised (the checkpoint layouts are tested in
``test_demo_pretraining.py``)."""
import numpy as np
import torch

from mmdet_l2vit.datasets.shape_crops import (iterate_batches,
                                              make_shape_crops)


def test_crops_deterministic_balanced_and_split():
    crops = make_shape_crops(20, 'train', 0, 32)
    assert crops.images.shape == (20, 32, 32, 3)
    assert crops.images.dtype == np.uint8
    assert np.bincount(crops.labels).tolist() == [4] * 5
    make_shape_crops.cache_clear()
    again = make_shape_crops(10, 'train', 0, 32)
    np.testing.assert_array_equal(again.images, crops.images[:10])
    heldout = make_shape_crops(10, 'heldout', 0, 32)
    assert not (heldout.images == crops.images[:10]).all(axis=(1, 2, 3)).any()


def test_batches_normalised_and_seeded():
    crops = make_shape_crops(20, 'train', 0, 32)
    first = next(iterate_batches(crops, 8, torch.Generator().manual_seed(1)))
    second = next(iterate_batches(crops, 8, torch.Generator().manual_seed(1)))
    images, labels, epoch = first
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert epoch == 0 and abs(float(images.mean())) < 2.
    torch.testing.assert_close(images, second[0])
    torch.testing.assert_close(labels, second[1])
