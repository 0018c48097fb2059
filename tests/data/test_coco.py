"""COCO dataset, split resolver, transforms and loaders against hand-written tiny COCO files."""
from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from blendmask.data import (
    CocoInstanceDataset,
    Compose,
    RandomHorizontalFlip,
    TrainingSampler,
    build_test_loader,
    build_train_loader,
    collate,
    resolve_split,
)

from tests.helpers.coco_files import box_of, rle_of, write_coco, write_png

H, W = 20, 24


def _image(iid, name=None, h=H, w=W):
    return {"id": iid, "file_name": name or f"im{iid}.png", "height": h, "width": w}


def _mask(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _ann(aid, iid, cat, seg, bbox, **extra):
    return {"id": aid, "image_id": iid, "category_id": cat, "segmentation": seg, "bbox": bbox, "iscrowd": 0, **extra}


@pytest.fixture()
def mixed(tmp_path):
    """Image 1: polygon (cat 7) + compressed RLE (cat 3) + crowd; image 2: uncompressed RLE;
    image 3: no annotations; image 4: only a crowd annotation."""
    rle_mask, raw_mask, crowd_mask = _mask(10, 18, 2, 9), _mask(1, 6, 15, 23), _mask(0, 4, 0, 4)
    anns = [
        _ann(1, 1, 7, [[12.0, 2.0, 20.0, 2.0, 20.0, 8.0, 12.0, 8.0]], [12.0, 2.0, 8.0, 6.0]),
        _ann(2, 1, 3, rle_of(rle_mask), box_of(rle_mask)),
        _ann(3, 1, 3, rle_of(crowd_mask, compressed=False), box_of(crowd_mask), iscrowd=1),
        _ann(4, 2, 7, rle_of(raw_mask, compressed=False), box_of(raw_mask)),
        _ann(5, 4, 3, rle_of(crowd_mask), box_of(crowd_mask), iscrowd=1),
    ]
    path = write_coco(tmp_path, [_image(1), _image(2), _image(3), _image(4)], anns)
    return path, tmp_path / "images", {"rle": rle_mask, "raw": raw_mask}


def test_polygons_rle_crowd_and_empty_images(mixed):
    path, image_dir, masks = mixed
    ds = CocoInstanceDataset(path, image_dir)
    assert ds.category_ids == [3, 7] and ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.ann_file == str(path) and len(ds) == 4 and ds.image_ids == [1, 2, 3, 4]

    image, target = ds[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    pixels = np.array(Image.open(image_dir / "im1.png"))
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    assert target["image_id"] == 1
    assert target["labels"].tolist() == [1, 0]  # crowd dropped; category 7 -> label 1, 3 -> label 0
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].tolist() == [[12.0, 2.0, 20.0, 8.0], [2.0, 10.0, 9.0, 18.0]]
    assert target["masks"].shape == (2, H, W) and target["masks"].dtype == torch.uint8
    polygon = target["masks"][0].numpy()
    assert polygon[3:8, 13:20].all() and polygon.sum() == polygon[2:9, 12:21].sum()  # inside its box
    assert np.array_equal(target["masks"][1].numpy(), masks["rle"])

    _, target = ds[1]
    assert target["labels"].tolist() == [1] and np.array_equal(target["masks"][0].numpy(), masks["raw"])

    for index in (2, 3):  # no annotations at all / only crowd: kept with empty targets
        _, target = ds[index]
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
        assert target["masks"].shape == (0, H, W)


def test_keep_empty_false_drops_images_without_trainable_instances(mixed):
    path, image_dir, _ = mixed
    assert CocoInstanceDataset(path, image_dir, keep_empty=False).image_ids == [1, 2]


def test_grayscale_image_becomes_rgb(tmp_path):
    path = write_coco(tmp_path, [_image(1)], [], write_images=False)
    gray = write_png(tmp_path / "images" / "im1.png", H, W, mode="L")
    image, _ = CocoInstanceDataset(path, tmp_path / "images")[0]
    assert image.shape == (3, H, W)
    assert torch.equal(image[1], torch.from_numpy(gray).float() / 255)


def test_box_slightly_outside_is_clipped(tmp_path):
    m = _mask(0, 5, 20, 24)
    path = write_coco(tmp_path, [_image(1)], [_ann(1, 1, 3, rle_of(m), [19.6, -0.4, 4.9, 5.4])])
    _, target = CocoInstanceDataset(path, tmp_path / "images")[0]
    assert torch.allclose(target["boxes"], torch.tensor([[19.6, 0.0, 24.0, 5.0]]))


# ------------------------------------------------------------------------------ malformed input
def _expect_error(tmp_path, images, anns, exc, *needles, categories=None):
    path = write_coco(tmp_path, images, anns, categories)
    with pytest.raises(exc) as info:
        CocoInstanceDataset(path, tmp_path / "images")
    for needle in (str(path),) + needles:
        assert needle in str(info.value)


def test_error_polygon_with_fewer_than_3_points(tmp_path):
    anns = [_ann(42, 1, 3, [[1.0, 1.0, 5.0, 1.0]], [1.0, 1.0, 4.0, 1.0])]
    _expect_error(tmp_path, [_image(1)], anns, ValueError, "annotation id 42", "at least 3")


def test_error_unknown_category(tmp_path):
    anns = [_ann(5, 1, 99, [[1, 1, 5, 1, 5, 5]], [1.0, 1.0, 4.0, 4.0])]
    _expect_error(tmp_path, [_image(1)], anns, ValueError, "annotation id 5", "category_id 99")


def test_error_box_outside_image(tmp_path):
    anns = [_ann(8, 1, 3, [[1, 1, 5, 1, 5, 5]], [20.0, 1.0, 10.0, 4.0])]
    _expect_error(tmp_path, [_image(1)], anns, ValueError, "annotation id 8", "outside")


def test_error_negative_box_size(tmp_path):
    anns = [_ann(9, 1, 3, [[1, 1, 5, 1, 5, 5]], [2.0, 1.0, -1.0, 4.0])]
    _expect_error(tmp_path, [_image(1)], anns, ValueError, "annotation id 9", "non-negative")


def test_error_rle_size_differs_from_image(tmp_path):
    anns = [_ann(3, 1, 3, rle_of(_mask(1, 3, 1, 3, h=10, w=10)), [1.0, 1.0, 2.0, 2.0])]
    _expect_error(tmp_path, [_image(1)], anns, ValueError, "annotation id 3", "RLE size")


def test_error_uncompressed_rle_with_wrong_total(tmp_path):
    anns = [_ann(4, 1, 3, {"size": [H, W], "counts": [5, 5]}, [1.0, 1.0, 2.0, 2.0])]
    _expect_error(tmp_path, [_image(1)], anns, ValueError, "annotation id 4", "height*width")


def test_error_annotation_of_unknown_image(tmp_path):
    anns = [_ann(6, 77, 3, [[1, 1, 5, 1, 5, 5]], [1.0, 1.0, 4.0, 4.0])]
    _expect_error(tmp_path, [_image(1)], anns, ValueError, "annotation id 6", "image_id 77")


def test_error_record_without_id(tmp_path):
    anns = [{"image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2], "segmentation": [[1, 1, 3, 1, 3, 3]]}]
    _expect_error(tmp_path, [_image(1)], anns, ValueError, "annotation record", "'id'")


def test_error_missing_image_file(tmp_path):
    path = write_coco(tmp_path, [_image(1), _image(2, "gone.png")], [], write_images=False)
    write_png(tmp_path / "images" / "im1.png", H, W)
    with pytest.raises(FileNotFoundError) as info:
        CocoInstanceDataset(path, tmp_path / "images")
    assert str(path) in str(info.value) and "image id 2" in str(info.value) and "gone.png" in str(info.value)


def test_error_broken_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [], "annotations": [\n  {"id": 1,, }]}')
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError) as info:
        CocoInstanceDataset(path, tmp_path / "images")
    assert str(path) in str(info.value) and "broken JSON at line 2" in str(info.value)


def test_error_missing_top_level_list(tmp_path):
    path = tmp_path / "no_cats.json"
    path.write_text(json.dumps({"images": [], "annotations": []}))
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="'categories'"):
        CocoInstanceDataset(path, tmp_path / "images")


def test_unreadable_image_fails_clearly_when_loaded(tmp_path):
    path = write_coco(tmp_path, [_image(1)], [], write_images=False)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "im1.png").write_bytes(b"this is not a png")
    ds = CocoInstanceDataset(path, tmp_path / "images")
    with pytest.raises(ValueError) as info:
        ds[0]
    assert str(path) in str(info.value) and "image id 1" in str(info.value) and "im1.png" in str(info.value) and "cannot read" in str(info.value)


def test_image_of_wrong_size_fails_clearly(tmp_path):
    path = write_coco(tmp_path, [_image(1)], [], write_images=False)
    write_png(tmp_path / "images" / "im1.png", H + 1, W)
    with pytest.raises(ValueError, match="is 24x21 but 24x20 was expected"):
        CocoInstanceDataset(path, tmp_path / "images")[0]


# ------------------------------------------------------------------------------ resolve_split
def test_resolve_split_directory_layout(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text("{}")
    (tmp_path / "val").mkdir()
    assert resolve_split(tmp_path, "val") == (str(tmp_path / "annotations" / "instances_val.json"), str(tmp_path / "val"))
    with pytest.raises(FileNotFoundError, match="instances_train.json"):
        resolve_split(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        resolve_split(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="neither a directory nor"):
        resolve_split(tmp_path / "nope", "val")


def test_resolve_split_json_file(tmp_path):
    # images/ next to the JSON
    a = tmp_path / "a"
    path = write_coco(a, [_image(1)], [])
    assert resolve_split(path, "train") == (str(path), str(a / "images"))
    # COCO 2017 layout: annotations/instances_val2017.json + val2017/
    b = tmp_path / "b"
    path = write_coco(b / "annotations", [_image(1)], [], name="instances_val2017.json", write_images=False)
    write_png(b / "val2017" / "im1.png", H, W)
    assert resolve_split(path, "val") == (str(path), str(b / "val2017"))
    # images beside the JSON
    c = tmp_path / "c"
    path = write_coco(c, [_image(1)], [], write_images=False)
    write_png(c / "im1.png", H, W)
    assert resolve_split(path, "val") == (str(path), str(c))
    # nowhere
    d = tmp_path / "d"
    path = write_coco(d, [_image(1)], [], write_images=False)
    with pytest.raises(FileNotFoundError, match="cannot find the image directory"):
        resolve_split(path, "val")


# ------------------------------------------------------------------------------ transforms
def test_horizontal_flip_moves_image_boxes_and_masks_together(mixed):
    path, image_dir, _ = mixed
    ds = CocoInstanceDataset(path, image_dir)
    image, target = ds[0]
    flipped_image, flipped = RandomHorizontalFlip(1.0)(image, target)
    assert torch.equal(flipped_image, image.flip(-1))
    assert torch.equal(flipped["masks"], target["masks"].flip(-1))
    for box, mask in zip(flipped["boxes"], flipped["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if mask.sum() == (box[3] - box[1]) * (box[2] - box[0]):  # a filled rectangle: box is tight
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    assert flipped["boxes"][1].tolist() == [W - 9.0, 10.0, W - 2.0, 18.0]
    assert torch.equal(target["boxes"][1], torch.tensor([2.0, 10.0, 9.0, 18.0]))  # input untouched
    same_image, same = Compose([RandomHorizontalFlip(0.0)])(image, target)
    assert same_image is image and same is target
    twice = Compose([RandomHorizontalFlip(1.0), RandomHorizontalFlip(1.0)])(image, target)
    assert torch.equal(twice[0], image) and torch.equal(twice[1]["boxes"], target["boxes"])
    with pytest.raises(ValueError, match="p must be"):
        RandomHorizontalFlip(1.5)
    with pytest.raises(TypeError, match="callable"):
        Compose([3])


# ------------------------------------------------------------------------------ loaders
def test_collate_keeps_lists():
    a, b = (torch.zeros(3, 4, 5), {"image_id": 1}), (torch.ones(3, 6, 7), {"image_id": 2})
    images, targets = collate([a, b])
    assert isinstance(images, list) and [i.shape[1] for i in images] == [4, 6]
    assert [t["image_id"] for t in targets] == [1, 2]


def test_training_sampler_epochs_ranks_and_fast_forward():
    full = list(itertools.islice(iter(TrainingSampler(5, seed=3)), 23))
    indices = [i for i, _ in full]
    for epoch in range(4):
        assert sorted(indices[5 * epoch: 5 * epoch + 5]) == list(range(5))  # each epoch a permutation
    assert indices[:5] != indices[5:10] or indices[5:10] != indices[10:15]  # reshuffled
    assert len({s for _, s in full}) == len(full)  # every sample has its own seed
    assert full == list(itertools.islice(iter(TrainingSampler(5, seed=3)), 23))
    assert indices != [i for i, _ in itertools.islice(iter(TrainingSampler(5, seed=4)), 23)]
    # fast-forward = continuing the stream
    assert list(itertools.islice(iter(TrainingSampler(5, seed=3, start=7)), 16)) == full[7:]
    # two ranks interleave the global stream
    r0 = list(itertools.islice(iter(TrainingSampler(5, seed=3, rank=0, world_size=2)), 11))
    r1 = list(itertools.islice(iter(TrainingSampler(5, seed=3, rank=1, world_size=2, start=2)), 9))
    assert r0 == full[0:22:2] and r1 == full[5:23:2]
    with pytest.raises(ValueError, match="empty dataset"):
        TrainingSampler(0, seed=0)
    with pytest.raises(ValueError, match="rank"):
        TrainingSampler(3, seed=0, rank=2, world_size=2)


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _same_batches(a, b):
    for (ia, ta), (ib, tb) in zip(a, b):
        assert [t["image_id"] for t in ta] == [t["image_id"] for t in tb]
        assert all(torch.equal(x, y) for x, y in zip(ia, ib))
        assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(ta, tb))


def test_train_loader_resumes_exactly_and_ignores_worker_count(mixed):
    path, image_dir, _ = mixed
    ds = CocoInstanceDataset(path, image_dir, transforms=RandomHorizontalFlip(0.5))
    torch.manual_seed(123)
    state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    full = _batches(build_train_loader(ds, batch_size=3, num_workers=0, seed=11), 6)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and random.getstate() == py_state
    flips = [torch.equal(img, ds[ds.image_ids.index(t["image_id"])][0]) for imgs, ts in full for img, t in zip(imgs, ts)]
    assert 0 < sum(flips) < len(flips)  # some images were flipped, some not
    resumed = _batches(build_train_loader(ds, batch_size=3, num_workers=0, seed=11, start_iter=2), 4)
    _same_batches(full[2:], resumed)
    with_worker = _batches(build_train_loader(ds, batch_size=3, num_workers=1, seed=11), 6)
    _same_batches(full, with_worker)
    other_seed = _batches(build_train_loader(ds, batch_size=3, num_workers=0, seed=12), 6)
    assert [t["image_id"] for _, ts in other_seed for t in ts] != [t["image_id"] for _, ts in full for t in ts]


def test_train_loader_rejects_bad_arguments(mixed):
    ds = CocoInstanceDataset(*mixed[:2])
    with pytest.raises(ValueError, match="batch_size"):
        build_train_loader(ds, batch_size=0, num_workers=0, seed=0)
    with pytest.raises(RuntimeError, match="not initialised"):
        build_train_loader(ds, batch_size=1, num_workers=0, seed=0, distributed=True)


def test_test_loader_is_ordered_and_finite(mixed):
    ds = CocoInstanceDataset(*mixed[:2])
    batches = list(build_test_loader(ds, batch_size=3))
    assert [len(images) for images, _ in batches] == [3, 1]
    assert [t["image_id"] for _, ts in batches for t in ts] == [1, 2, 3, 4]
