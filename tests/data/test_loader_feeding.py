"""Loaders that feed a GPU: uint8 images through the workers (float32 made on the device, equal to
the float read), the automatic worker count, and the resumable data order at any worker count."""
from __future__ import annotations

import pytest
import torch

from blendmask.data import CocoInstanceDataset, build_train_loader
from blendmask.data import loader as loader_module
from blendmask.data.loader import batch_to_device, build_test_loader, default_num_workers
from blendmask.data.transforms import RandomHorizontalFlip

from tests.helpers.coco_files import write_coco, write_png


@pytest.fixture
def coco_set(tmp_path):
    images = [{"id": i, "file_name": f"im{i}.png", "width": 20 + i, "height": 16} for i in range(1, 8)]
    anns = [{"id": i, "image_id": i, "category_id": 3, "bbox": [2.0, 2.0, 6.0, 5.0],
             "segmentation": [[2.0, 2.0, 8.0, 2.0, 8.0, 7.0, 2.0, 7.0]]} for i in range(1, 8)]
    path = write_coco(tmp_path, images, anns)
    write_png(tmp_path / "images" / "im3.png", 16, 23, mode="L", seed=3)  # a gray image too
    return path, tmp_path / "images"


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_uint8_images_become_the_float_images_on_the_device(coco_set):
    floats = CocoInstanceDataset(*coco_set)
    bytes_ = CocoInstanceDataset(*coco_set, uint8_images=True)
    for index in range(len(floats)):
        image = bytes_.load_image(index)
        assert image.dtype == torch.uint8
        (on_device,), _ = batch_to_device([image], [], torch.device("cpu"))
        assert on_device.dtype == torch.float32 and torch.equal(on_device, floats.load_image(index))


@pytest.mark.parametrize("workers", [1, 2])
def test_data_order_holds_for_any_worker_count(coco_set, workers):
    ds = CocoInstanceDataset(*coco_set, transforms=RandomHorizontalFlip(0.5), uint8_images=True)
    reference = _take(build_train_loader(ds, batch_size=2, num_workers=0, seed=5), 6)
    loader = build_train_loader(ds, batch_size=2, num_workers=workers, seed=5)
    assert loader.persistent_workers
    got = _take(loader, 6)
    resumed = _take(build_train_loader(ds, batch_size=2, num_workers=workers, seed=5, start_iter=3), 3)
    for (ia, ta), (ib, tb) in zip(reference, got):
        assert [t["image_id"] for t in ta] == [t["image_id"] for t in tb]
        assert all(torch.equal(x, y) for x, y in zip(ia, ib))
        assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(ta, tb))
    for (ia, ta), (ib, tb) in zip(reference[3:], resumed):
        assert [t["image_id"] for t in ta] == [t["image_id"] for t in tb]
        assert all(torch.equal(x, y) for x, y in zip(ia, ib))


def test_automatic_worker_count(monkeypatch):
    monkeypatch.setattr(loader_module.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_num_workers(torch.device("cpu")) == 0
    assert default_num_workers(torch.device("cuda", 0)) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_num_workers(torch.device("cuda", 3)) == 2
    monkeypatch.setattr(loader_module.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_num_workers(torch.device("cuda", 3)) == 0


def test_none_workers_means_automatic(coco_set):
    ds = CocoInstanceDataset(*coco_set)
    assert build_train_loader(ds, batch_size=1, num_workers=None, seed=0).num_workers == 0  # CPU


class _FreezeCounts(torch.utils.data.Dataset):
    """Each sample: the number of objects in the garbage collector's permanent generation of the
    process that loads it."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        import gc

        return torch.zeros(3, 2, 2), {"frozen": gc.get_freeze_count()}


def test_workers_keep_the_objects_they_inherit_out_of_the_garbage_collector():
    # A worker's first full collection would otherwise write to every object it inherited from the
    # training process, copying their pages (~80 MB per worker after an epoch of COCO train).
    import gc

    before = gc.get_freeze_count()
    train = iter(build_train_loader(_FreezeCounts(), batch_size=2, num_workers=1, seed=0))
    assert all(t["frozen"] > 1000 for t in next(train)[1])
    test = build_test_loader(_FreezeCounts(), batch_size=2, num_workers=1)
    assert all(t["frozen"] > 1000 for _, targets in test for t in targets)
    assert gc.get_freeze_count() == before  # the training process itself is left alone
