"""Simple Copy-Paste: occlusion of the instances underneath, recomputed boxes, dropped instances,
polygons and RLE, and determinism inside the resumable per-sample-seeded data order."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from blendmask.data import CocoInstanceDataset, build_train_loader
from blendmask.data.copy_paste import CopyPasteDataset, paste_instances
from blendmask.data.jitter import LargeScaleJitter
from blendmask.data.transforms import Compose, RandomHorizontalFlip
from blendmask.polygons import PolygonMasks

H, W = 12, 16


def _rect(rows, cols):
    mask = torch.zeros(H, W, dtype=torch.uint8)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return mask


def _sample(rects, labels, fill):
    masks = torch.stack([_rect(*r) for r in rects]) if rects else torch.zeros(0, H, W, dtype=torch.uint8)
    boxes = torch.tensor([[c[0], r[0], c[1], r[1]] for r, c in rects], dtype=torch.float32).reshape(-1, 4)
    return torch.full((3, H, W), fill), {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.int64),
                                         "masks": masks, "image_id": 1}


def test_partly_covered_instance_keeps_its_visible_part_and_box():
    image, target = _sample([((2, 9), (2, 9)), ((0, 3), (12, 16))], [0, 1], 0.25)
    source_image, source = _sample([((0, 12), (6, 11))], [2], 0.75)
    out_image, out = paste_instances(image, target, source_image, source, torch.tensor([0]))
    assert out["labels"].tolist() == [0, 1, 2]
    assert torch.equal(out["masks"][0], _rect((2, 9), (2, 6)))  # columns 6-8 are now under the paste
    assert torch.equal(out["masks"][1], target["masks"][1])  # untouched
    assert torch.equal(out["masks"][2], _rect((0, 12), (6, 11)))
    assert out["boxes"].tolist() == [[2, 2, 6, 9], [12, 0, 16, 3], [6, 0, 11, 12]]
    cover = _rect((0, 12), (6, 11)).bool()
    assert (out_image[:, cover] == 0.75).all() and (out_image[:, ~cover] == 0.25).all()
    assert out["masks"].dtype == torch.uint8 and out["image_id"] == 1


def test_fully_covered_instance_is_dropped():
    image, target = _sample([((3, 6), (3, 6)), ((8, 11), (0, 4))], [0, 1], 0.0)
    source_image, source = _sample([((2, 7), (2, 8)), ((0, 1), (0, 1))], [2, 0], 1.0)
    _, out = paste_instances(image, target, source_image, source, torch.tensor([0]))
    assert out["labels"].tolist() == [1, 2]
    assert out["boxes"].tolist() == [[0, 8, 4, 11], [2, 2, 8, 7]]
    assert len(out["masks"]) == 2


def test_only_the_chosen_source_instances_are_pasted():
    image, target = _sample([((0, 4), (0, 4))], [0], 0.0)
    source_image, source = _sample([((0, 2), (0, 2)), ((6, 10), (6, 10))], [1, 2], 1.0)
    out_image, out = paste_instances(image, target, source_image, source, torch.tensor([1]))
    assert out["labels"].tolist() == [0, 2]
    assert torch.equal(out["masks"][0], target["masks"][0])  # instance 0 of the source was not pasted
    assert (out_image[:, 0:2, 0:2] == 0.0).all()
    _, unchanged = paste_instances(image, target, source_image, source, torch.zeros(0, dtype=torch.int64))
    assert unchanged is target


def test_polygon_destination_gives_the_same_result_as_its_bitmask():
    polygon = [[2.0, 2.0, 9.0, 2.0, 9.0, 9.0, 2.0, 9.0]]  # pixel centres 2..8 in both directions
    image, bitmask_target = _sample([((2, 9), (2, 9))], [0], 0.0)
    polygon_target = dict(bitmask_target, masks=PolygonMasks([polygon], (H, W)))
    source_image, source = _sample([((0, 12), (5, 12))], [1], 1.0)
    source_polygons = dict(source, masks=PolygonMasks([[[5.0, 0.0, 12.0, 0.0, 12.0, 12.0, 5.0, 12.0]]], (H, W)))
    from_bitmasks = paste_instances(image, bitmask_target, source_image, source, torch.tensor([0]))
    from_polygons = paste_instances(image, polygon_target, source_image, source_polygons, torch.tensor([0]))
    assert torch.equal(from_bitmasks[0], from_polygons[0])
    assert torch.equal(from_bitmasks[1]["masks"], from_polygons[1]["masks"])
    assert from_polygons[1]["boxes"].tolist() == [[2, 2, 5, 9], [5, 0, 12, 12]]


def test_mismatched_images_and_missing_masks_are_refused():
    image, target = _sample([((0, 4), (0, 4))], [0], 0.0)
    with pytest.raises(ValueError, match="different shapes"):
        paste_instances(image, target, torch.zeros(3, H + 1, W), target, torch.tensor([0]))
    no_masks = {k: v for k, v in target.items() if k != "masks"}
    with pytest.raises(ValueError, match="needs instance masks"):
        paste_instances(image, target, image, no_masks, torch.tensor([0]))


# ----------------------------------------------------------------------------- the dataset wrapper
def _write_dataset(root):
    """Three 24x32 images: instances as polygons, compressed RLE and uncompressed RLE."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    (root / "images").mkdir()
    for image_id in (1, 2, 3):
        name = f"{image_id}.png"
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "images" / name)
        images.append({"id": image_id, "file_name": name, "height": 24, "width": 32})
    polygon = [4.0, 4.0, 14.0, 4.0, 14.0, 12.0, 4.0, 12.0]
    annotations.append({"id": 1, "image_id": 1, "category_id": 1, "segmentation": [polygon],
                        "bbox": [4, 4, 10, 8], "iscrowd": 0})
    annotations.append({"id": 2, "image_id": 1, "category_id": 2, "segmentation": [[18.0, 6.0, 28.0, 6.0, 23.0, 20.0]],
                        "bbox": [18, 6, 10, 14], "iscrowd": 0})
    blob = np.zeros((24, 32), dtype=np.uint8)
    blob[8:20, 10:26] = 1
    rle = mask_utils.encode(np.asfortranarray(blob))
    annotations.append({"id": 3, "image_id": 2, "category_id": 2, "bbox": [10, 8, 16, 12], "iscrowd": 0,
                        "segmentation": {"size": [24, 32], "counts": rle["counts"].decode("ascii")}})
    flat = np.zeros((24, 32), dtype=np.uint8)
    flat[2:6, 2:30] = 1
    counts = [int(len(list(g))) for _, g in __import__("itertools").groupby(flat.flatten(order="F"))]
    if flat.flatten(order="F")[0] == 1:
        counts = [0] + counts
    annotations.append({"id": 4, "image_id": 3, "category_id": 1, "bbox": [2, 2, 28, 4], "iscrowd": 0,
                        "segmentation": {"size": [24, 32], "counts": counts}})
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return ann_file, root / "images"


def _copy_paste_set(tmp_path, prob=1.0):
    ann_file, image_dir = _write_dataset(tmp_path)
    raw = CocoInstanceDataset(ann_file, image_dir)
    transforms = Compose([LargeScaleJitter((20, 28), (0.5, 1.5)), RandomHorizontalFlip(0.5)])
    return CopyPasteDataset(raw, transforms=transforms, prob=prob, max_instances=2), raw


def _batches(dataset, count, start_iter=0):
    loader = build_train_loader(dataset, batch_size=1, num_workers=0, seed=11, distributed=False, start_iter=start_iter)
    it = iter(loader)
    return [next(it) for _ in range(count)]


def _same(a, b):
    (images_a, targets_a), (images_b, targets_b) = a, b
    if not torch.equal(images_a[0], images_b[0]):
        return False
    ta, tb = targets_a[0], targets_b[0]
    mask_a = ta["masks"].to_bitmasks() if isinstance(ta["masks"], PolygonMasks) else ta["masks"]
    mask_b = tb["masks"].to_bitmasks() if isinstance(tb["masks"], PolygonMasks) else tb["masks"]
    return (torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
            and torch.equal(mask_a, mask_b))


def test_samples_are_a_function_of_the_sample_seed_and_resume_exactly(tmp_path):
    dataset, _ = _copy_paste_set(tmp_path)
    first, second = _batches(dataset, 8), _batches(dataset, 8)
    assert all(_same(a, b) for a, b in zip(first, second))
    resumed = _batches(dataset, 4, start_iter=4)
    assert all(_same(a, b) for a, b in zip(first[4:], resumed))
    assert not all(_same(first[0], b) for b in first[1:])  # the samples do vary


def test_pasted_samples_are_consistent_and_carry_more_instances(tmp_path):
    dataset, raw = _copy_paste_set(tmp_path)
    (tmp_path / "b").mkdir()
    unpasted, _ = _copy_paste_set(tmp_path / "b", prob=0.0)
    grew = 0
    for pasted_batch, plain_batch in zip(_batches(dataset, 12), _batches(unpasted, 12)):
        image, target = pasted_batch[0][0], pasted_batch[1][0]
        assert image.shape == (3, 20, 28) and target["masks"].dtype == torch.uint8
        assert target["masks"].shape == (len(target["labels"]), 20, 28)
        assert target["masks"].flatten(1).any(dim=1).all()  # no empty instance survives
        for box, mask in zip(target["boxes"], target["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        grew += len(target["labels"]) > len(plain_batch[1][0]["labels"])
    assert grew > 0
    assert dataset.num_classes == raw.num_classes and dataset.class_names == ["a", "b"]


def test_wrapper_refuses_bad_arguments(tmp_path):
    ann_file, image_dir = _write_dataset(tmp_path)
    raw = CocoInstanceDataset(ann_file, image_dir)
    with pytest.raises(ValueError, match="prob"):
        CopyPasteDataset(raw, transforms=None, prob=1.5, max_instances=1)
    with pytest.raises(ValueError, match="max_instances"):
        CopyPasteDataset(raw, transforms=None, prob=0.5, max_instances=0)
    augmented = CocoInstanceDataset(ann_file, image_dir, transforms=RandomHorizontalFlip(0.5))
    with pytest.raises(ValueError, match="un-augmented"):
        CopyPasteDataset(augmented, transforms=None, prob=0.5, max_instances=1)


def test_config_section_round_trips_and_checks_types():
    from blendmask.config import BlendMaskConfig
    from blendmask.errors import InputTypeError

    cfg = BlendMaskConfig.from_dict({"input": {"copy_paste": {"prob": 0.5, "max_instances": 3}}})
    assert (cfg.input.copy_paste.prob, cfg.input.copy_paste.max_instances) == (0.5, 3)
    assert BlendMaskConfig.from_dict(cfg.to_dict()) == cfg and BlendMaskConfig().input.copy_paste.prob == 0.0
    with pytest.raises(InputTypeError, match="input.copy_paste.max_instances"):
        BlendMaskConfig.from_dict({"input": {"copy_paste": {"max_instances": 2.5}}})


def test_wrapper_pickles_for_loader_workers(tmp_path):
    import pickle

    dataset, _ = _copy_paste_set(tmp_path)
    copy = pickle.loads(pickle.dumps(dataset))
    assert len(copy) == len(dataset) and copy.class_names == dataset.class_names
    torch.manual_seed(3)
    first = copy[1]
    torch.manual_seed(3)
    again = dataset[1]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["labels"], again[1]["labels"])
