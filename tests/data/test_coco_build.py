"""The numpy-speed checks of :func:`build_records` refuse exactly what ``check_coco`` refuses, with
its message, on the fuzzer's hostile files."""
from __future__ import annotations

import copy

import pytest
from pycocotools import mask as mask_utils
from hypothesis import given, settings

from blendmask.data.coco_build import build_records
from blendmask.data.coco_checks import check_coco

from tests.helpers.coco_fuzz_worker import hostile_case


def _outcome(fn, data):
    try:
        fn(copy.deepcopy(data), "ann.json")
    except ValueError as e:
        return str(e)
    return None


@settings(max_examples=300, deadline=None, derandomize=True)
@given(hostile_case())
def test_fast_checks_agree_with_check_coco(case):
    data = case[0]
    expected = _outcome(check_coco, data)
    assert _outcome(build_records, data) == expected


def test_records_of_a_valid_file_fill_area_and_crowd():
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 2, 2],
                             "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]]},
                            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 8, 6], "iscrowd": 1,
                             "area": 5, "segmentation": {"size": [6, 8], "counts": [0, 48]}}],
            "categories": [{"id": 2, "name": "b"}]}
    records = build_records(data, "x.json")
    assert records.ann_crowd.tolist() == [0, 1] and records.ann_areas.tolist() == [4.0, 5.0]
    assert records.segmentation(0) == [[1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0]]
    assert mask_utils.decode(records.segmentation(1)).all()  # the uncompressed RLE, compressed
    with pytest.raises(ValueError, match="x.json: annotation id 2 .*'iscrowd' must be 0 or 1"):
        data["annotations"][1]["iscrowd"] = True
        build_records(data, "x.json")
