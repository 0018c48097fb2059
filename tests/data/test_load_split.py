"""A ``--data`` COCO JSON (instances or panoptic) is parsed once per process, whichever of the
format check, the image directory search and the dataset asks first."""
from __future__ import annotations

import json

import pytest

from blendmask.data import CocoInstanceDataset, resolve_split
from blendmask.data import coco_index
from blendmask.data.panoptic import CocoPanopticDataset, PanopticFormatError, detect_format, resolve_panoptic_split
from blendmask.data.panoptic_shapes import make_panoptic_shapes
from blendmask.engine.defaults import load_dataset
from blendmask.engine.tasks import PANOPTIC, task_of_data

from tests.helpers.synthetic_coco import count_json_parses, write_polygon_coco


@pytest.fixture
def parses(monkeypatch):
    """The list of files ``read_json_file`` parsed during the test (the process's index emptied first)."""
    monkeypatch.setattr(coco_index, "_recent", coco_index.OrderedDict())
    monkeypatch.setattr(coco_index, "_recent_panoptic", coco_index.OrderedDict())
    return count_json_parses(monkeypatch)


def test_load_dataset_parses_the_json_once(tmp_path, parses):
    path = write_polygon_coco(tmp_path, 5)
    ds = load_dataset(path, "train")
    assert isinstance(ds, CocoInstanceDataset) and len(ds) == 5 and ds.image_dir == str(tmp_path / "images")
    assert parses == [str(path)]


def test_the_old_call_sequence_parses_once_too(tmp_path, parses):
    path = write_polygon_coco(tmp_path, 5)
    assert detect_format(path) == "instances"
    ann_file, image_dir = resolve_split(path, "val")
    CocoInstanceDataset(ann_file, image_dir)
    assert parses == [str(path)]


def test_a_changed_file_is_read_again(tmp_path, parses):
    path = write_polygon_coco(tmp_path, 5)
    assert len(load_dataset(path, "train")) == 5
    data = json.loads(path.read_text())
    data["images"] = data["images"][:3]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] <= 3]
    path.write_text(json.dumps(data))
    assert len(load_dataset(path, "train")) == 3 and len(parses) == 2


def test_load_dataset_refuses_the_other_format(tmp_path):
    path = write_polygon_coco(tmp_path, 2)
    with pytest.raises(PanopticFormatError, match="holds COCO instances data"):
        load_dataset(path, "train", task=PANOPTIC)


def _panoptic_json(root):
    """A small synthetic panoptic set; its train JSON (the COCO 2017 layout: images in ``../train``)."""
    make_panoptic_shapes(root, train=2, val=1, size=64, seed=0)
    return root / "annotations" / "panoptic_train.json"


def test_load_dataset_parses_a_panoptic_json_once(tmp_path, parses):
    path = _panoptic_json(tmp_path)
    ds = load_dataset(path, "train")
    assert isinstance(ds, CocoPanopticDataset) and len(ds) == 2
    assert parses == [str(path)]


def test_the_panoptic_call_sequence_parses_once_too(tmp_path, parses):
    path = _panoptic_json(tmp_path)
    assert detect_format(path) == "panoptic" and task_of_data(path) is PANOPTIC
    CocoPanopticDataset(*resolve_panoptic_split(path, "train"))
    assert len(load_dataset(path, "train", task=PANOPTIC)) == 2
    assert parses == [str(path)]


def test_a_changed_panoptic_file_is_read_again(tmp_path, parses):
    path = _panoptic_json(tmp_path)
    assert len(load_dataset(path, "train")) == 2
    data = json.loads(path.read_text())
    data["images"], data["annotations"] = data["images"][:1], data["annotations"][:1]
    path.write_text(json.dumps(data))
    assert len(load_dataset(path, "train")) == 1 and parses == [str(path)] * 2


def test_a_panoptic_dataset_does_not_change_the_shared_parse(tmp_path, parses):
    path = _panoptic_json(tmp_path)
    before = json.loads(path.read_text())
    ds = CocoPanopticDataset(*resolve_panoptic_split(path, "train"))
    ds.load_target(0)
    assert coco_index.load_panoptic_json(path) == before and parses == [str(path)]


def test_an_instance_file_read_as_panoptic_stays_instances(tmp_path, parses):
    path = write_polygon_coco(tmp_path, 2)
    with pytest.raises(PanopticFormatError, match="is a COCO instances file"):
        CocoPanopticDataset(path, tmp_path, tmp_path)
    assert detect_format(path) == "instances"
