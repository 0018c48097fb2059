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


def _dataset_naming(shapes, tmp_path, names):
    """A copy of the shapes train images in ``tmp_path/images`` and an annotation file whose
    images are named ``names`` (the first ones)."""
    data = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    for rec, name in zip(data["images"], names):
        rec["file_name"] = name
    ann = tmp_path / "named.json"
    ann.write_text(json.dumps(data))
    image_dir = tmp_path / "images"
    shutil.copytree(shapes / "train", image_dir)
    return ann, image_dir


@pytest.mark.parametrize("kind", ["dangling link", "directory"])
def test_a_listed_entry_that_is_no_file_is_not_found(shapes, tmp_path, kind):
    files = sorted(p.name for p in (shapes / "train").glob("*.png"))
    ann, image_dir = _dataset_naming(shapes, tmp_path, [files[0], "bad.png"])
    if kind == "dangling link":
        (image_dir / "bad.png").symlink_to(tmp_path / "nowhere.png")
    else:
        (image_dir / "bad.png").mkdir()
    with pytest.raises(FileNotFoundError, match=r"image id \d+: image file .*bad\.png' not found"):
        CocoInstanceDataset(ann, image_dir)


def test_links_and_subdirectories_inside_are_found(shapes, tmp_path):
    files = sorted(p.name for p in (shapes / "train").glob("*.png"))
    ann, image_dir = _dataset_naming(shapes, tmp_path, ["link.png", "sub/inner.png"])
    (image_dir / "link.png").symlink_to(image_dir / files[0])
    (image_dir / "sub").mkdir()
    shutil.copy(image_dir / files[1], image_dir / "sub" / "inner.png")
    dataset = CocoInstanceDataset(ann, image_dir)
    paths = {dataset.image_path(i) for i in range(len(dataset))}
    assert {str(image_dir / "link.png"), str(image_dir / "sub" / "inner.png")} <= paths


def test_image_files_are_found_by_one_listing(shapes, tmp_path, monkeypatch):
    from blendmask.data import coco

    ann, image_dir = _dataset_naming(shapes, tmp_path, [])
    looked_up = []
    real = coco.os.path.isfile
    monkeypatch.setattr(coco.os.path, "isfile", lambda p: looked_up.append(p) or real(p))
    dataset = CocoInstanceDataset(ann, image_dir)
    image_lookups = [p for p in looked_up if str(p).startswith(str(image_dir))]
    assert len(dataset) == 2 and len(image_lookups) == 1  # the first name only: it proves containment
