"""The COCO panoptic reader, its errors, the synthetic panoptic set and the sem_seg-aware transforms."""
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from blendmask.data.panoptic import (CocoPanopticDataset, PanopticFormatError, detect_format, id_to_rgb,
                                     resolve_panoptic_split, rgb_to_id)
from blendmask.data.panoptic_shapes import STUFF_CLASSES, make_panoptic_shapes
from blendmask.data.transforms import RandomHorizontalFlip, RandomInstanceCrop


def _write_set(root, *, ids=None, segments=None, png_size=(6, 4)):
    """A hand-made one-image panoptic set: a 4x6 image, thing 'disc' (id 300), stuff 'sky' (id 7), void."""
    (root / "annotations" / "panoptic_train").mkdir(parents=True)
    (root / "train").mkdir()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "train" / "a.png")
    if ids is None:
        ids = np.array([[7, 7, 7, 7, 7, 7], [7, 300, 300, 7, 0, 0], [7, 300, 300, 7, 0, 0], [7, 7, 7, 7, 7, 7]])
    png = id_to_rgb(ids)
    if png_size != (6, 4):
        png = np.zeros((png_size[1], png_size[0], 3), np.uint8)
    Image.fromarray(png).save(root / "annotations" / "panoptic_train" / "a.png")
    if segments is None:
        segments = [{"id": 300, "category_id": 1, "iscrowd": 0}, {"id": 7, "category_id": 10, "iscrowd": 0}]
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 6, "height": 4}],
            "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": segments}],
            "categories": [{"id": 1, "name": "disc", "isthing": 1}, {"id": 10, "name": "sky", "isthing": 0}]}
    (root / "annotations" / "panoptic_train.json").write_text(json.dumps(data))
    return root


def test_rgb_id_encoding_round_trips():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 7 * 65536 + 3 * 256 + 9, 16777215]])
    assert (rgb_to_id(id_to_rgb(ids)) == ids).all()
    assert id_to_rgb(np.array([[256 + 2]]))[0, 0].tolist() == [2, 1, 0]


def test_targets_things_and_the_separated_semantic_map(tmp_path):
    root = _write_set(tmp_path)
    ds = CocoPanopticDataset(*resolve_panoptic_split(root, "train"))
    assert (ds.class_names, ds.stuff_names, ds.num_classes, ds.num_stuff_classes) == (["disc"], ["sky"], 1, 1)
    image, target = ds[0]
    assert image.shape == (3, 4, 6)
    assert target["labels"].tolist() == [0]
    assert target["boxes"].tolist() == [[1.0, 1.0, 3.0, 3.0]]
    assert target["masks"].dtype == torch.uint8 and int(target["masks"].sum()) == 4
    sem = target["sem_seg"]
    assert sem[1, 1] == 0 and sem[0, 0] == 1 and sem[1, 4] == 255  # things 0, stuff 1.., void 255


def test_crowd_things_are_semantic_things_but_no_instance(tmp_path):
    root = _write_set(tmp_path, segments=[{"id": 300, "category_id": 1, "iscrowd": 1},
                                          {"id": 7, "category_id": 10}])
    _, target = CocoPanopticDataset(*resolve_panoptic_split(root, "train"))[0]
    assert target["masks"].shape == (0, 4, 6) and target["boxes"].shape == (0, 4)
    assert target["sem_seg"][1, 1] == 0


@pytest.mark.parametrize("case, match", [
    ("missing_segment", r"a\.png: segment id 301 \(category 1\) of segments_info is not in the PNG"),
    ("extra_segment", r"a\.png: segment id 7 is in the PNG but not in segments_info"),
    ("wrong_size", r"PNG .*a\.png' is 5x4 but the image is 6x4"),
])
def test_png_content_errors_name_the_file_and_the_segment(tmp_path, case, match):
    kwargs = {
        "missing_segment": {"segments": [{"id": 300, "category_id": 1}, {"id": 7, "category_id": 10},
                                         {"id": 301, "category_id": 1}]},
        "extra_segment": {"segments": [{"id": 300, "category_id": 1}]},
        "wrong_size": {"png_size": (5, 4)},
    }[case]
    ds = CocoPanopticDataset(*resolve_panoptic_split(_write_set(tmp_path, **kwargs), "train"))
    with pytest.raises(ValueError, match=match):
        ds[0]


def test_construction_errors(tmp_path):
    root = _write_set(tmp_path, segments=[{"id": 300, "category_id": 99}])
    with pytest.raises(ValueError, match=r"segment id 300: category_id 99 is not in 'categories'"):
        CocoPanopticDataset(*resolve_panoptic_split(root, "train"))
    (root / "annotations" / "panoptic_train" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"PNG .*a\.png' not found"):
        CocoPanopticDataset(*resolve_panoptic_split(root, "train"))
    with pytest.raises(FileNotFoundError, match="no panoptic val annotations"):
        resolve_panoptic_split(root, "val")


def test_the_other_format_is_named(tmp_path):
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({"images": [], "categories": [{"id": 1, "name": "a"}],
                                     "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1],
                                                      "segmentation": [[0, 0, 1, 0, 1, 1]]}]}))
    assert detect_format(instances) == "instances"
    with pytest.raises(PanopticFormatError, match="is a COCO instances file"):
        CocoPanopticDataset(instances, tmp_path, tmp_path)
    root = _write_set(tmp_path / "pan")
    assert detect_format(root) == "panoptic"
    assert detect_format(root / "annotations" / "panoptic_train.json") == "panoptic"


def test_json_file_layout_of_coco_2017(tmp_path):
    root = _write_set(tmp_path)
    (root / "annotations" / "panoptic_train").rename(root / "annotations" / "panoptic_train2017")
    (root / "annotations" / "panoptic_train.json").rename(root / "annotations" / "panoptic_train2017.json")
    (root / "train").rename(root / "train2017")
    json_file, image_dir, png_dir = resolve_panoptic_split(root / "annotations" / "panoptic_train2017.json", "val")
    assert image_dir.endswith("train2017") and png_dir.endswith("panoptic_train2017")
    assert len(CocoPanopticDataset(json_file, image_dir, png_dir)) == 1


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_synthetic_panoptic_set_is_deterministic_valid_and_covers_every_pixel(tmp_path):
    a = make_panoptic_shapes(tmp_path / "a", train=3, val=2, size=64, seed=3)
    b = make_panoptic_shapes(tmp_path / "b", train=3, val=2, size=64, seed=3)
    c = make_panoptic_shapes(tmp_path / "c", train=3, val=2, size=64, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)
    ds = CocoPanopticDataset(*resolve_panoptic_split(a, "train"))
    assert ds.stuff_names == list(STUFF_CLASSES) and ds.num_classes == 4
    for i in range(len(ds)):
        _, target = ds[i]
        assert not (target["sem_seg"] == 255).any()  # no void: every pixel is a segment
        assert target["masks"].shape[0] >= 1 and (target["sem_seg"] == 1).any()  # shapes and sky
    make_panoptic_shapes(a, train=1, val=1, size=64, seed=3)  # its own files: replaced


def test_synthetic_set_refuses_foreign_panoptic_files(tmp_path):
    root = _write_set(tmp_path)
    with pytest.raises(FileExistsError, match="was not written by it"):
        make_panoptic_shapes(root, train=1, val=1, size=64)


def test_flip_and_crop_carry_the_semantic_target():
    image = torch.rand(3, 8, 10)
    sem = torch.arange(80).reshape(8, 10)
    masks = torch.zeros(1, 8, 10, dtype=torch.uint8)
    masks[0, 2:6, 2:6] = 1
    target = {"boxes": torch.tensor([[2.0, 2, 6, 6]]), "labels": torch.tensor([0]), "masks": masks, "sem_seg": sem}
    _, flipped = RandomHorizontalFlip(1.0)(image, target)
    assert torch.equal(flipped["sem_seg"], sem.flip(-1))
    torch.manual_seed(0)
    cropped_image, cropped = RandomInstanceCrop("relative", (0.5, 0.5))(image, target)
    assert cropped["sem_seg"].shape == cropped_image.shape[-2:] == (4, 5)
    y0, x0 = divmod(int(cropped["sem_seg"][0, 0]), 10)
    assert torch.equal(cropped["sem_seg"], sem[y0:y0 + 4, x0:x0 + 5])
