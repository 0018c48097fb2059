"""Annotation file names that lead outside the data set are refused, by their text alone."""
import json
import shutil

import pytest

from blendmask.data import CocoInstanceDataset, make_shapes
from blendmask.data.paths import PathOutsideDataError, contained_path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("contain") / "set", train=2, val=0, size=64, seed=3)


def _with_first_file_name(shapes, tmp_path, name):
    data = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    data["images"][0]["file_name"] = name
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("name", ["../../x.png", "../train/../../secret.png", "/etc/hostname",
                                  "../../../../etc/hostname", "sub/../../escape.png"])
def test_names_leaving_the_image_directory_are_refused(shapes, tmp_path, name):
    ann = _with_first_file_name(shapes, tmp_path, name)
    with pytest.raises(PathOutsideDataError) as error:
        CocoInstanceDataset(ann, shapes / "train")
    message = str(error.value)
    assert f"file_name {name!r} leads outside the image directory" in message and "--allow-outside-data" in message


def test_the_message_does_not_tell_whether_the_file_exists(shapes, tmp_path):
    outside = tmp_path / "outside.png"
    shutil.copy(next((shapes / "train").glob("*.png")), outside)
    image_dir = tmp_path / "images"
    shutil.copytree(shapes / "train", image_dir)
    messages = []
    for name in ("../outside.png", "../missing.png"):
        with pytest.raises(PathOutsideDataError) as error:
            CocoInstanceDataset(_with_first_file_name(shapes, tmp_path, name), image_dir)
        messages.append(str(error.value).replace(name, "NAME"))
    assert messages[0] == messages[1]


def test_allow_outside_reads_them(shapes, tmp_path):
    first = sorted((shapes / "train").glob("*.png"))[0]
    data = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    original = next(r for r in data["images"] if (shapes / "train" / r["file_name"]) == first)
    original["file_name"] = str(first)  # absolute
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    image_dir = tmp_path / "empty_dir_images"
    shutil.copytree(shapes / "train", image_dir)
    dataset = CocoInstanceDataset(ann, image_dir, allow_outside=True)
    assert str(first) in [dataset.image_path(i) for i in range(len(dataset))]


def test_names_inside_are_kept_as_joined():
    assert contained_path("d", "a/../b.png", where="w") == "d/a/../b.png"
    assert contained_path("/data/", "x/y.png", where="w") == "/data/x/y.png"
