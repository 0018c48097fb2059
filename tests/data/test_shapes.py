"""The synthetic shapes set: determinism, valid COCO, visible-pixel annotations."""
from __future__ import annotations

import json
from pathlib import Path

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


# ------------------------------------------------------------------------------ output safety
def _snapshot(root):
    return {str(p.relative_to(root)): (p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


def test_refuses_to_overwrite_a_user_data_set(tmp_path):
    user = tmp_path / "mydata"
    (user / "annotations").mkdir(parents=True)
    (user / "annotations" / "instances_train.json").write_text('{"my": "annotations"}')
    before = _snapshot(user)
    with pytest.raises(FileExistsError) as info:
        make_shapes(user, train=2, val=1, size=64)
    assert str(user / "annotations" / "instances_train.json") in str(info.value) and "overwrite" in str(info.value)
    assert _snapshot(user) == before  # checked before any work: nothing written, no directory made
    (user / "annotations" / "instances_train.json").unlink()
    (user / "train").mkdir()
    (user / "train" / "000002.png").write_bytes(b"my own picture")
    with pytest.raises(FileExistsError, match="000002.png"):
        make_shapes(user, train=2, val=1, size=64)
    assert (user / "train" / "000002.png").read_bytes() == b"my own picture"


def test_overwrite_replaces_only_its_own_files(tmp_path):
    out = make_shapes(tmp_path / "s", train=3, val=1, size=64, seed=1)
    (out / "train" / "notes.txt").write_text("mine")
    (out / "annotations" / "other.json").write_text("{}")
    with pytest.raises(FileExistsError):
        make_shapes(out, train=2, val=1, size=64, seed=2)
    stale = (out / "train" / "000003.png").read_bytes()
    make_shapes(out, train=2, val=1, size=64, seed=2, overwrite=True)
    fresh = _files(make_shapes(tmp_path / "fresh", train=2, val=1, size=64, seed=2))
    files = _files(out)
    assert {p: files[p] for p in fresh} == fresh  # every file it writes is replaced
    # the rest is left alone: the user's files, and the earlier run's image the new JSON does not list
    assert set(files) - set(fresh) == {Path("train/notes.txt"), Path("annotations/other.json"), Path("train/000003.png")}
    assert files[Path("train/notes.txt")] == b"mine" and files[Path("train/000003.png")] == stale


@pytest.mark.parametrize("overwrite", [False, True])
def test_never_writes_through_a_symbolic_link(tmp_path, overwrite):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.json").write_text("keep")
    out = tmp_path / "s"
    out.mkdir()
    (out / "train").symlink_to(outside, target_is_directory=True)
    with pytest.raises(FileExistsError, match="train is a symbolic link"):
        make_shapes(out, train=2, val=1, size=64, overwrite=overwrite)
    (out / "train").unlink()
    (out / "annotations").mkdir()
    (out / "annotations" / "instances_val.json").symlink_to(outside / "precious.json")
    with pytest.raises(FileExistsError, match="instances_val.json is a symbolic link"):
        make_shapes(out, train=2, val=1, size=64, overwrite=overwrite)
    assert sorted(p.name for p in outside.iterdir()) == ["precious.json"]
    assert (outside / "precious.json").read_text() == "keep"
    assert not (out / "train").exists()  # refused before any work


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        make_shapes(tmp_path / "f", train=1, val=0, size=64)


def test_cli_refuses_then_overwrites_with_the_flag(tmp_path, capsys):
    from blendmask.cli import main

    args = ["make-shapes", str(tmp_path / "s"), "--train", "2", "--val", "1", "--size", "64"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "instances_train.json exists" in err and "--overwrite" in err
    assert main(args + ["--overwrite"]) == 0
