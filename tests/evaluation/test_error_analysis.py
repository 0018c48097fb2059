"""TIDE-style error analysis: one hand-made case of each error type, the counts and dAP signs, the
report files, and results files of other tools."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from blendmask.data.coco import load_coco_json
from blendmask.evaluation.analysis_report import write_analysis
from blendmask.evaluation.error_analysis import ERROR_TYPES, analyze_errors, average_precision
from blendmask.evaluation.results_file import read_results

SIDE = 50
A, B = 1, 2


def _poly(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _rle(x0, y0, x1, y1):
    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [SIDE, SIDE], "counts": rle["counts"].decode("ascii")}


def _det(image_id, cls, box, score):
    x0, y0, x1, y1 = box
    return {"image_id": image_id, "category_id": cls, "score": score, "bbox": [x0, y0, x1 - x0, y1 - y0],
            "segmentation": _rle(*box)}


SQUARE = (0, 0, 10, 10)
# image id -> ground truth [(class, box)]
GROUND_TRUTH = {
    1: [(A, SQUARE)],
    2: [(A, SQUARE)],
    3: [(A, SQUARE)],
    4: [(A, SQUARE), (B, (40, 40, 50, 50))],
    5: [(A, SQUARE)],
    6: [(A, SQUARE)],
    7: [],
    8: [(A, SQUARE)],
}
DETECTIONS = [
    _det(6, A, SQUARE, 0.95),             # true positive
    _det(3, A, (5, 0, 15, 10), 0.90),     # localisation: IoU 1/3 with its class's ground truth
    _det(6, A, (30, 30, 40, 40), 0.88),   # background: touches no ground truth
    _det(7, A, SQUARE, 0.87),             # background: an image without ground truth
    _det(1, A, SQUARE, 0.85),             # true positive
    _det(1, A, (0, 0, 10, 9), 0.80),      # duplicate of the one above
    _det(2, B, SQUARE, 0.70),             # classification: right place, class B on an A
    _det(4, B, (5, 0, 15, 10), 0.50),     # both: class B, IoU 1/3 with an A; the A is missed
    _det(8, A, SQUARE, 0.10),             # true positive after every false positive of A
    _det(4, B, (40, 40, 50, 50), 0.05),   # true positive after the false positives of B
]                                         # image 5: its A is missed
EXPECTED_COUNTS = {"classification": 1, "localisation": 1, "both": 1, "duplicate": 1, "background": 2, "missed": 2}


def _write_gt(root, polygons=True):
    images, annotations = [], []
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, objects in GROUND_TRUTH.items():
        name = f"{image_id}.png"
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(root / "images" / name)
        images.append({"id": image_id, "file_name": name, "height": SIDE, "width": SIDE})
        for cls, (x0, y0, x1, y1) in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls, "iscrowd": 0,
                                "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "segmentation": _poly(x0, y0, x1, y1) if polygons else _rle(x0, y0, x1, y1)})
    path = root / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": A, "name": "a"}, {"id": B, "name": "b"}]}))
    return path


def _results_file(root, records, name="results.json"):
    path = root / name
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_one_of_each_error_type_gives_the_expected_counts_and_positive_costs(tmp_path, iou_type):
    coco_gt = load_coco_json(_write_gt(tmp_path))
    results = read_results(_results_file(tmp_path, DETECTIONS), coco_gt)
    analysis = analyze_errors(coco_gt, results, iou_type)
    assert analysis.counts == EXPECTED_COUNTS
    assert all(analysis.delta_ap[kind] > 0 for kind in ERROR_TYPES), analysis.delta_ap
    statuses = {index: status for per_image in analysis.detections.values() for index, status in per_image}
    assert [statuses[i] for i in range(len(DETECTIONS))] == [
        "tp", "localisation", "background", "background", "tp", "duplicate", "classification", "both", "tp", "tp"]
    assert analysis.missed_gt[4] and analysis.missed_gt[5] and not analysis.missed_gt[2] and not analysis.missed_gt[3]
    assert analysis.per_image[4] == {"false_positives": 1, "missed": 1}


def test_ap50_agrees_with_cocoeval(tmp_path):
    coco_gt = load_coco_json(_write_gt(tmp_path))
    results = read_results(_results_file(tmp_path, DETECTIONS), coco_gt)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco_gt, coco_gt.loadRes([{k: v for k, v in r.items() if k != "segmentation"}
                                                          for r in results]), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert analyze_errors(coco_gt, results, "bbox").ap50 == pytest.approx(evaluation.stats[1], abs=1e-9)


def test_perfect_detections_have_no_errors_and_fixing_costs_nothing(tmp_path):
    coco_gt = load_coco_json(_write_gt(tmp_path))
    perfect = [_det(image_id, cls, box, 0.9) for image_id, objects in GROUND_TRUTH.items() for cls, box in objects]
    analysis = analyze_errors(coco_gt, read_results(_results_file(tmp_path, perfect), coco_gt), "segm")
    assert analysis.ap50 == 1.0
    assert analysis.counts == {kind: 0 for kind in ERROR_TYPES}
    assert analysis.delta_ap == {kind: 0.0 for kind in ERROR_TYPES}


def test_average_precision_of_hand_computed_curves():
    assert average_precision([0.9, 0.8], [True, True], 2) == 1.0
    assert average_precision([0.9, 0.8], [False, True], 1) == pytest.approx(0.5)  # precision 1/2 at every recall
    assert average_precision([0.9], [True], 2) == pytest.approx(51 / 101)  # recall 0.5 reached, not beyond
    assert average_precision([], [], 3) == 0.0 and average_precision([0.5], [False], 0) == 0.0


def test_crowd_regions_ignore_detections_inside_them(tmp_path):
    path = _write_gt(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"].append({"id": 99, "image_id": 7, "category_id": A, "iscrowd": 1, "bbox": [0, 0, 20, 20],
                                "segmentation": _rle(0, 0, 20, 20), "area": 400})
    path.write_text(json.dumps(data))
    coco_gt = load_coco_json(path)
    analysis = analyze_errors(coco_gt, read_results(_results_file(tmp_path, DETECTIONS), coco_gt), "bbox")
    assert analysis.counts["background"] == 1 and dict(analysis.detections[7])[3] == "ignored"


def test_other_tools_results_are_read(tmp_path):
    """Records with only a mask (polygons or uncompressed RLE), or only a box, and foreign extra fields."""
    coco_gt = load_coco_json(_write_gt(tmp_path))
    flat = np.zeros((SIDE, SIDE), dtype=np.uint8)
    flat[0:10, 0:10] = 1
    column_major = flat.flatten(order="F")
    counts = [int(len(run)) for run in np.split(column_major, np.flatnonzero(np.diff(column_major)) + 1)]
    foreign = [
        {"image_id": 1, "category_id": A, "score": 0.9, "segmentation": _poly(0, 0, 10, 10), "id": 7, "area": 100.0,
         "attributes": {"occluded": False}},
        {"image_id": 2, "category_id": A, "score": 0.8, "segmentation": {"size": [SIDE, SIDE], "counts": [0] + counts}},
        {"image_id": 3, "category_id": A, "score": 0.7, "bbox": [0, 0, 10, 10], "track_id": 3},
    ]
    results = read_results(_results_file(tmp_path, foreign), coco_gt)
    assert [r["bbox"] for r in results] == [[0.0, 0.0, 10.0, 10.0]] * 3
    assert "segmentation" not in results[2] and mask_utils.area(results[1]["segmentation"]) == 100
    analysis = analyze_errors(coco_gt, results, "bbox")
    assert [s for per in analysis.detections.values() for _, s in per] == ["tp", "tp", "tp"]
    report = write_analysis(_results_file(tmp_path, foreign, "foreign.json"), tmp_path / "gt.json",
                            str(tmp_path / "images"), tmp_path / "out", gallery_size=2)
    assert list(report["iou_types"]) == ["bbox"] and "segm" in report["skipped"]


@pytest.mark.parametrize("record, match", [
    ({"image_id": 99, "category_id": A, "score": 0.5, "bbox": [0, 0, 1, 1]}, "image_id 99"),
    ({"image_id": 1, "category_id": 5, "score": 0.5, "bbox": [0, 0, 1, 1]}, "category_id 5"),
    ({"image_id": 1, "category_id": A, "score": float("nan"), "bbox": [0, 0, 1, 1]}, "score"),
    ({"image_id": 1, "category_id": A, "score": 0.5}, "neither a bbox nor a segmentation"),
    ({"image_id": 1, "category_id": A, "score": 0.5, "bbox": [0, 0, -1, 1]}, "bbox"),
    ({"image_id": 1, "category_id": A, "score": 0.5, "segmentation": {"size": [3, 3], "counts": "0"}}, "RLE size"),
    ({"category_id": A, "score": 0.5, "bbox": [0, 0, 1, 1]}, "lacks"),
])
def test_bad_records_are_one_line_errors_naming_the_record(tmp_path, record, match):
    coco_gt = load_coco_json(_write_gt(tmp_path))
    path = _results_file(tmp_path, [DETECTIONS[0], record])
    with pytest.raises(ValueError, match=match) as info:
        read_results(path, coco_gt)
    assert "detection 1" in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_report_files_and_gallery(tmp_path):
    gt = _write_gt(tmp_path, polygons=False)
    out = tmp_path / "analysis"
    report = write_analysis(_results_file(tmp_path, DETECTIONS), gt, str(tmp_path / "images"), out, gallery_size=3)
    saved = json.loads((out / "analysis.json").read_text())
    assert saved == json.loads(json.dumps(report))
    for iou_type in ("bbox", "segm"):
        part = saved["iou_types"][iou_type]
        assert part["tide"]["counts"] == EXPECTED_COUNTS
        assert set(part["coco"]["per_class_ap"]) == {"a", "b"}
        assert (out / part["pr_curves_png"]).is_file()
        assert len(part["gallery"]) == 3
        first = part["gallery"][0]
        assert (first["image_id"], first["false_positives"], first["missed"]) == (4, 1, 1)  # a 'both' and a miss
        drawn = np.asarray(Image.open(out / first["png"]))
        assert drawn.shape == (SIDE * 10, SIDE * 10, 3)  # enlarged to about 512 px
        colours = {tuple(c) for c in drawn.reshape(-1, 3)}
        assert (230, 30, 30) in colours and (250, 210, 0) in colours  # the false positive and the miss
    markdown = (out / "analysis.md").read_text()
    assert "| localisation | 1 |" in markdown and "pr_segm.png" in markdown
    write_analysis(_results_file(tmp_path, DETECTIONS), gt, None, out)  # an earlier analysis may be replaced


def test_report_refuses_a_directory_it_did_not_make(tmp_path):
    gt = _write_gt(tmp_path)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="taken"):
        write_analysis(_results_file(tmp_path, DETECTIONS), gt, None, out)
    assert (out / "notes.txt").read_text() == "mine" and not (out / "analysis.json").exists()
