"""Repeat-factor sampling: factors against hand-computed ones, stochastic rounding, the resumable
and rank-split data order, and the loader/config wiring."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from blendmask.config import get_config
from blendmask.data import CocoInstanceDataset, build_train_loader
from blendmask.data.repeat_factor import RepeatFactorTrainingSampler, repeat_factors

from tests.helpers.coco_files import write_coco

IMAGES = [[1], [1, 2, 2], [1], []]  # category 1 in 3 of 4 images, category 2 in 1 of 4


def test_factors_by_hand():
    # t = 0.5: f(1) = 0.75 -> max(1, sqrt(0.5 / 0.75)) = 1; f(2) = 0.25 -> sqrt(2)
    assert repeat_factors(IMAGES, 0.5).tolist() == pytest.approx([1.0, math.sqrt(2.0), 1.0, 1.0], abs=1e-12)
    # t = 1: r(1) = sqrt(4 / 3), r(2) = 2; an image takes its rarest category's factor, 1 without any
    assert repeat_factors(IMAGES, 1.0).tolist() == pytest.approx([math.sqrt(4 / 3), 2.0, math.sqrt(4 / 3), 1.0],
                                                                 abs=1e-12)
    with pytest.raises(ValueError, match="threshold"):
        repeat_factors(IMAGES, 0.0)


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_stochastic_rounding_per_epoch():
    factors = np.array([1.0, 2.0, 1.25, 3.5])
    sampler = RepeatFactorTrainingSampler(factors, seed=3)
    counts = np.stack([sampler.epoch_counts(e) for e in range(400)])
    assert (counts[:, 0] == 1).all() and (counts[:, 1] == 2).all()
    assert set(counts[:, 2].tolist()) == {1, 2} and set(counts[:, 3].tolist()) == {3, 4}
    assert counts.mean(axis=0) == pytest.approx(factors, abs=0.08)
    assert not np.array_equal(counts[0], counts[1]) or not np.array_equal(counts[1], counts[2])
    order = sampler.epoch_order(7)
    assert np.bincount(order, minlength=4).tolist() == sampler.epoch_counts(7).tolist()


def test_order_resumes_and_splits_across_ranks():
    factors = repeat_factors(IMAGES * 5, 1.0)
    whole = _take(RepeatFactorTrainingSampler(factors, seed=9), 200)  # many epochs of varying length
    for start in (0, 1, 23, 57, 150):
        assert _take(RepeatFactorTrainingSampler(factors, seed=9, start=start), 50) == whole[start:start + 50]
    for rank in range(3):
        assert _take(RepeatFactorTrainingSampler(factors, seed=9, rank=rank, world_size=3), 40) == whole[rank::3][:40]
        resumed = RepeatFactorTrainingSampler(factors, seed=9, rank=rank, world_size=3, start=11)
        assert _take(resumed, 20) == whole[rank::3][11:31]
    assert _take(RepeatFactorTrainingSampler(factors, seed=10), 200) != whole


def test_loader_and_config(tmp_path):
    images = [{"id": i, "file_name": f"im{i}.png", "width": 12, "height": 10} for i in range(1, 5)]
    anns = [{"id": k + 1, "image_id": i + 1, "category_id": c, "bbox": [1.0, 1.0, 4.0, 4.0],
             "segmentation": [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0]]}
            for k, (i, c) in enumerate((i, c) for i, cats in enumerate([[3], [3, 7], [3], []]) for c in cats)]
    ds = CocoInstanceDataset(write_coco(tmp_path, images, anns), tmp_path / "images")
    assert [c.tolist() for c in ds.image_categories()] == [[3], [3, 7], [3], []]
    loader = build_train_loader(ds, batch_size=2, num_workers=0, seed=1, sampler="repeat_factor", repeat_threshold=1.0)
    assert isinstance(loader.sampler, RepeatFactorTrainingSampler)
    assert loader.sampler.factors.tolist() == pytest.approx(repeat_factors([[3], [3, 7], [3], []], 1.0).tolist())
    batches = list(itertools.islice(iter(loader), 3))
    assert [len(images) for images, _ in batches] == [2, 2, 2]
    with pytest.raises(ValueError, match="sampler"):
        build_train_loader(ds, batch_size=2, num_workers=0, seed=1, sampler="weighted")
    cfg = get_config("lite_mobilenet_v2", {"dataloader.sampler": "repeat_factor", "dataloader.repeat_threshold": 0.3})
    assert cfg.dataloader.sampler == "repeat_factor" and cfg.dataloader.repeat_threshold == 0.3
    with pytest.raises(ValueError, match="dataloader.sampler"):
        get_config("lite_mobilenet_v2", {"dataloader.sampler": "uniform"})
