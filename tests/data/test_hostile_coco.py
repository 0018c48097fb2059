"""Hostile COCO files: every malformed record is refused up front with a one-line error naming the
file, the record and (for annotations) the image; fields COCOeval needs are filled; pycocotools
never sees an unvalidated number, polygon or RLE."""
from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from blendmask.data import CocoInstanceDataset, load_coco_json
from blendmask.data.coco_checks import COORDINATE_LIMIT, rle_string_counts
from blendmask.evaluation import COCOEvaluator

from tests.helpers.coco_files import box_of, rle_of, write_coco, write_png

H, W = 20, 24
POLYGON = [12.0, 2.0, 20.0, 2.0, 20.0, 8.0, 12.0, 8.0]


def _mask(y0, y1, x0, x1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _base():
    """A valid file: image 1 with a polygon (id 11), a compressed RLE (id 12) and an uncompressed
    crowd RLE (id 13); image 2 empty."""
    rle, crowd = _mask(10, 18, 2, 9), _mask(0, 4, 0, 4)
    return {
        "images": [{"id": 1, "file_name": "im1.png", "height": H, "width": W},
                   {"id": 2, "file_name": "im2.png", "height": H, "width": W}],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 3, "segmentation": [list(POLYGON)],
             "bbox": [12.0, 2.0, 8.0, 6.0], "area": 48.0, "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 7, "segmentation": rle_of(rle), "bbox": box_of(rle),
             "area": float(rle.sum()), "iscrowd": 0},
            {"id": 13, "image_id": 1, "category_id": 3, "segmentation": rle_of(crowd, compressed=False),
             "bbox": box_of(crowd), "area": float(crowd.sum()), "iscrowd": 1},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }


def _write(tmp_path, data, *, text=None):
    write_png(tmp_path / "images" / "im1.png", H, W)
    write_png(tmp_path / "images" / "im2.png", H, W, seed=1)
    path = tmp_path / "ann.json"
    path.write_text(text if text is not None else json.dumps(data))
    return path


def _ann(data, aid):
    return next(a for a in data["annotations"] if a["id"] == aid)


def _set(aid, key, value):
    def mutate(data):
        _ann(data, aid)[key] = value
    return mutate


def _poly(value, index=3):
    def mutate(data):
        _ann(data, 11)["segmentation"][0][index] = value
    return mutate


def _image_field(key, value):
    def mutate(data):
        data["images"][0][key] = value
    return mutate


ANN_11 = ("annotation id 11", "image id 1", "im1.png")
ANN_12 = ("annotation id 12", "image id 1", "im1.png")
ANN_13 = ("annotation id 13", "image id 1", "im1.png")

# (case id, mutation, needles the message must contain besides the file path)
REFUSED = [
    ("polygon-nan", _poly(math.nan), ANN_11 + ("NaN",)),
    ("polygon-inf", _poly(math.inf), ANN_11 + ("NaN or infinite",)),
    ("polygon-1e9", _poly(1e9), ANN_11 + ("outside",)),
    ("polygon-huge-int", _poly(10 ** 400), ANN_11 + ("too large",)),
    ("polygon-just-outside-limit", _poly(-(COORDINATE_LIMIT * W + 1.0)), ANN_11 + ("outside",)),
    ("polygon-string-number", _poly("3"), ANN_11 + ("flat list of numbers",)),
    ("polygon-bool", _poly(True), ANN_11 + ("flat list of numbers",)),
    ("polygon-null", _poly(None), ANN_11 + ("flat list of numbers",)),
    ("polygon-odd", _set(11, "segmentation", [POLYGON[:7]]), ANN_11 + ("odd number",)),
    ("polygon-two-points", _set(11, "segmentation", [POLYGON[:4]]), ANN_11 + ("at least 3",)),
    ("polygon-list-empty", _set(11, "segmentation", []), ANN_11 + ("empty polygon list",)),
    ("polygon-nested", _set(11, "segmentation", [[POLYGON]]), ANN_11 + ("flat list",)),
    ("segmentation-missing", lambda d: _ann(d, 11).pop("segmentation"), ANN_11 + ("no 'segmentation'",)),
    ("segmentation-string", _set(11, "segmentation", "abc"), ANN_11 + ("polygon list or an RLE",)),
    ("bbox-nan", _set(11, "bbox", [1.0, math.nan, 2.0, 2.0]), ANN_11 + ("bbox",)),
    ("bbox-negative-size", _set(11, "bbox", [2.0, 1.0, -1.0, 4.0]), ANN_11 + ("non-negative",)),
    ("bbox-three-numbers", _set(11, "bbox", [2.0, 1.0, 4.0]), ANN_11 + ("4 numbers",)),
    ("bbox-missing", lambda d: _ann(d, 11).pop("bbox"), ANN_11 + ("'bbox'",)),
    ("bbox-far-outside", _set(11, "bbox", [20.0, 1.0, 10.0, 4.0]), ANN_11 + ("outside the 24x20 image",)),
    ("area-nan", _set(11, "area", math.nan), ANN_11 + ("'area'",)),
    ("area-negative", _set(11, "area", -3), ANN_11 + ("'area'",)),
    ("area-string", _set(11, "area", "48"), ANN_11 + ("'area'",)),
    ("iscrowd-2", _set(11, "iscrowd", 2), ANN_11 + ("'iscrowd'",)),
    ("iscrowd-string", _set(11, "iscrowd", "0"), ANN_11 + ("'iscrowd'",)),
    ("rle-string-corrupt-char", lambda d: _ann(d, 12)["segmentation"].update(counts="ab~c"), ANN_12 + ("outside '0'..'o'",)),
    ("rle-string-truncated", lambda d: _ann(d, 12)["segmentation"].update(counts=_ann(d, 12)["segmentation"]["counts"][:-1]), ANN_12 + ("RLE",)),
    ("rle-string-ends-inside-run", lambda d: _ann(d, 12)["segmentation"].update(counts="o"), ANN_12 + ("ends inside a run",)),
    ("rle-string-run-too-long", lambda d: _ann(d, 12)["segmentation"].update(counts="ooooooo0"), ANN_12 + ("longer than 6",)),
    ("rle-string-negative-run", lambda d: _ann(d, 12)["segmentation"].update(counts="0@"), ANN_12 + ("outside [0, 480]",)),
    ("rle-string-empty", lambda d: _ann(d, 12)["segmentation"].update(counts=""), ANN_12 + ("add up to 0",)),
    ("rle-size-differs", lambda d: _ann(d, 12)["segmentation"].update(size=[10, 10]), ANN_12 + ("RLE size",)),
    ("rle-size-strings", lambda d: _ann(d, 12)["segmentation"].update(size=["20", "24"]), ANN_12 + ("'size'",)),
    ("rle-counts-number", lambda d: _ann(d, 12)["segmentation"].update(counts=5), ANN_12 + ("string or a list",)),
    ("rle-list-wrong-total", lambda d: _ann(d, 13)["segmentation"].update(counts=[5, 5]), ANN_13 + ("add up to 10",)),
    ("rle-list-negative", lambda d: _ann(d, 13)["segmentation"].update(counts=[-1, H * W + 1]), ANN_13 + ("non-negative",)),
    ("rle-list-float", lambda d: _ann(d, 13)["segmentation"].update(counts=[float(H * W)]), ANN_13 + ("non-negative integers",)),
    ("annotation-id-0", _set(11, "id", 0), ("annotation record", "[1, 2**63)")),
    ("annotation-id-string", _set(11, "id", "11"), ("annotation record", "'id'")),
    ("annotation-id-missing", lambda d: _ann(d, 11).pop("id"), ("annotation record", "lacks ['id']")),
    ("annotation-id-duplicate", _set(12, "id", 11), ("duplicate annotation id 11",)),
    ("annotation-unknown-image", _set(11, "image_id", 77), ("annotation id 11", "image_id 77")),
    ("annotation-image-id-list", _set(11, "image_id", [1]), ("annotation id 11", "image_id [1]")),
    ("annotation-unknown-category", _set(11, "category_id", 99), ("annotation id 11", "category_id 99")),
    ("annotation-not-object", lambda d: d["annotations"].append([1, 2]), ("annotations[3] must be an object",)),
    ("image-id-duplicate", _image_field("id", 2), ("duplicate image id 2",)),
    ("image-id-float", _image_field("id", 1.0), ("image record", "'id'")),
    ("image-id-bool", _image_field("id", True), ("image record", "'id'")),
    ("image-width-zero", _image_field("width", 0), ("image id 1", "'width'")),
    ("image-height-negative", _image_field("height", -20), ("image id 1", "'height'")),
    ("image-width-huge", _image_field("width", 10 ** 9), ("image id 1", "'width'")),
    ("image-too-many-pixels", lambda d: d["images"][0].update(width=60000, height=60000), ("more than",)),
    ("image-width-string", _image_field("width", "24"), ("image id 1", "'width'")),
    ("image-file-name-missing", lambda d: d["images"][0].pop("file_name"), ("image id 1", "'file_name'")),
    ("image-file-name-nul", _image_field("file_name", "im1.png\x00x"), ("image id 1", "'file_name'")),
    ("category-id-duplicate", lambda d: d["categories"].append({"id": 3, "name": "again"}), ("duplicate category id 3",)),
    ("category-name-missing", lambda d: d["categories"][0].pop("name"), ("category id 3", "'name'")),
    ("categories-empty", lambda d: d.update(categories=[], annotations=[]), ("'categories' is empty",)),
    ("top-level-list", lambda d: d.clear(), ("'images'",)),
]


@pytest.mark.parametrize("mutate,needles", [pytest.param(m, n, id=i) for i, m, n in REFUSED])
def test_hostile_record_is_refused_with_file_and_record(tmp_path, mutate, needles):
    data = _base()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ValueError) as info:
        CocoInstanceDataset(path, tmp_path / "images")
    message = str(info.value)
    assert "\n" not in message
    for needle in (str(path),) + needles:
        assert needle in message, message


@pytest.mark.parametrize("text,needle", [
    ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]} trailing', "broken JSON"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"images": [{"id": ' + "9" * 5000 + "}]}", "not valid JSON"),
    ("\udcff", "not a UTF-8 text file"),
])
def test_unparseable_json_is_refused_with_the_file(tmp_path, text, needle):
    path = tmp_path / "ann.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError) as info:
        load_coco_json(path)
    assert str(path) in str(info.value) and needle in str(info.value) and "\n" not in str(info.value)


def test_json_nan_polygon_as_in_the_report_is_refused_before_pycocotools(tmp_path):
    """The reported case: a literal NaN in the JSON text (Python's json accepts it)."""
    text = json.dumps(_base()).replace("[12.0, 2.0, 20.0, 2.0, 20.0, 8.0, 12.0, 8.0]", "[10, 10, 20, NaN, 30, 40]")
    assert "NaN" in text
    path = _write(tmp_path, None, text=text)
    with pytest.raises(ValueError, match="annotation id 11 .*NaN"):
        load_coco_json(path)


def test_pycocotools_really_crashes_on_what_we_refuse():
    """Why the checks exist: unvalidated, a polygon coordinate of 1e9 kills pycocotools' C code
    (or makes it allocate wildly). Run in a subprocess under a 2 GiB address-space limit."""
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from pycocotools import mask\n"
        "rle = mask.frPyObjects([[10, 10, 20, 1e9, 30, 40]], 20, 24)\n"
        "mask.decode(mask.merge(rle))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert result.returncode != 0  # a segfault (-11) or MemoryError: nothing a user could act on


def test_missing_area_and_iscrowd_are_filled_and_cocoeval_runs(tmp_path):
    data = _base()
    for ann in data["annotations"]:
        ann.pop("area")
        if ann["id"] != 13:
            ann.pop("iscrowd")
    path = _write(tmp_path, data)
    ds = CocoInstanceDataset(path, tmp_path / "images")
    anns = ds.coco.anns
    assert anns[11]["iscrowd"] == 0 and anns[12]["iscrowd"] == 0 and anns[13]["iscrowd"] == 1
    assert anns[11]["area"] == 48.0  # the 8 x 6 rectangle rasterised
    assert anns[12]["area"] == float(_mask(10, 18, 2, 9).sum()) and anns[13]["area"] == 16.0
    # COCOeval reads 'area' and 'iscrowd' of every ground-truth annotation: a perfect prediction scores 1.
    _, target = ds[0]
    masks = target["masks"][:, None].float()
    outputs = [{"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(2), "masks": masks}]
    evaluator = COCOEvaluator(ds)
    evaluator.process([1], outputs)
    metrics = evaluator.evaluate()
    assert metrics["segm"]["AP"] == pytest.approx(1.0) and metrics["bbox"]["AP"] == pytest.approx(1.0)


def test_polygon_sticking_out_within_the_limit_is_clipped(tmp_path):
    data = _base()
    _ann(data, 11)["segmentation"] = [[12.0, 2.0, 90.0, 2.0, 90.0, 8.0, 12.0, 8.0]]  # x up to 90 > W
    _ann(data, 11)["bbox"] = [12.0, 2.0, 12.0, 6.0]
    path = _write(tmp_path, data)
    _, target = CocoInstanceDataset(path, tmp_path / "images")[0]
    assert target["masks"][0].sum() == 6 * (W - 12) and target["masks"][0][:, 12:].sum() == 6 * (W - 12)


def test_rle_string_decoder_matches_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for density in (0.0, 0.02, 0.5, 1.0):
        mask = (rng.random((37, 53)) < density).astype(np.uint8)
        counts = rle_string_counts(rle_of(mask)["counts"], mask.size)
        assert counts == rle_of(mask, compressed=False)["counts"] or (counts[0] == 0 and density == 1.0)
        assert sum(counts) == mask.size
        rle = mask_utils.frPyObjects({"size": [37, 53], "counts": counts}, 37, 53)
        assert np.array_equal(mask_utils.decode(rle), mask)


def test_valid_file_is_untouched_by_validation(tmp_path):
    data = _base()
    path = _write(tmp_path, data)
    assert load_coco_json(path).dataset == data  # nothing filled or rewritten in a complete file
    assert copy.deepcopy(data) == _base()
