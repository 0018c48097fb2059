"""The synthetic shapes set: determinism, valid COCO, visible-pixel annotations."""
from __future__ import annotations

import json

import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from blendmask.data import SHAPE_CLASSES, CocoInstanceDataset, make_shapes, resolve_split


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, train=12, val=3, size=96, seed=5)
    return root


def test_layout_and_same_seed_gives_identical_bytes(shapes, tmp_path):
    files = _files(shapes)
    assert {str(p) for p in files} == (
        {f"train/{i:06d}.png" for i in range(1, 13)} | {f"val/{i:06d}.png" for i in range(1, 4)}
        | {"annotations/instances_train.json", "annotations/instances_val.json"}
    )
    again = make_shapes(tmp_path / "again", train=12, val=3, size=96, seed=5)
    assert _files(again) == files
    other = _files(make_shapes(tmp_path / "other", train=12, val=3, size=96, seed=6))
    assert other.keys() == files.keys()
    assert all(other[p] != files[p] for p in files if p.suffix == ".png")


def test_image_does_not_depend_on_split_size(shapes, tmp_path):
    small = make_shapes(tmp_path / "small", train=2, val=1, size=96, seed=5)
    for name in ("train/000001.png", "train/000002.png", "val/000001.png"):
        assert (small / name).read_bytes() == (shapes / name).read_bytes()


def test_pycocotools_loads_it_and_annotations_are_consistent(shapes):
    for split, count in (("train", 12), ("val", 3)):
        coco = COCO(str(shapes / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
        assert len(coco.getImgIds()) == count
        for image_id in coco.getImgIds():
            info = coco.imgs[image_id]
            assert (info["width"], info["height"]) == (96, 96)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            assert 1 <= len(anns) <= 6
            for ann in anns:
                rle = coco.annToRLE(ann)
                assert ann["iscrowd"] == 0 and ann["area"] > 0
                assert ann["area"] == mask_utils.area(rle)
                assert ann["bbox"] == [float(v) for v in mask_utils.toBbox(rle)]


def test_masks_are_visible_pixels_with_occlusion(shapes):
    ds = CocoInstanceDataset(*resolve_split(shapes, "train"))
    instance_counts, touching_pairs = [], 0
    labels_seen = set()
    for i in range(len(ds)):
        image, target = ds[i]
        masks = target["masks"].numpy().astype(bool)
        instance_counts.append(len(masks))
        labels_seen.update(target["labels"].tolist())
        assert masks.sum(0).max() <= 1, "instance masks of one image must be disjoint (visible pixels only)"
        for a in range(len(masks)):
            grown = masks[a].copy()
            grown[1:] |= masks[a][:-1]
            grown[:-1] |= masks[a][1:]
            grown[:, 1:] |= masks[a][:, :-1]
            grown[:, :-1] |= masks[a][:, 1:]
            touching_pairs += sum(int((grown & masks[b]).any()) for b in range(len(masks)) if b != a)
    assert touching_pairs > 0, "some shapes must occlude others"
    assert max(instance_counts) >= 4 and min(instance_counts) >= 1
    assert labels_seen == set(range(len(SHAPE_CLASSES)))


def test_num_classes_and_argument_errors(tmp_path):
    root = make_shapes(tmp_path / "two", train=3, val=0, size=64, seed=0, num_classes=2)
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in data["categories"]] == ["circle", "rectangle"]
    assert {a["category_id"] for a in data["annotations"]} <= {1, 2}
    assert json.loads((root / "annotations" / "instances_val.json").read_text())["images"] == []
    with pytest.raises(FileExistsError, match="overwrite"):
        make_shapes(root, train=1, val=1, size=64, overwrite=False)
    for kwargs, needle in (
        ({"size": 32}, "size"),
        ({"train": -1}, "train"),
        ({"num_classes": 5}, "num_classes"),
        ({"min_instances": 3, "max_instances": 2}, "min_instances"),
    ):
        with pytest.raises(ValueError, match=needle):
            make_shapes(tmp_path / "bad", **kwargs)
