"""``blendmask analyze``: the report files from a results JSON and a data directory; bad input is one line."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from blendmask.cli import main


def _data_dir(root):
    (root / "val").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(root / "val" / "a.png")
    gt = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [2, 2, 8, 8],
                           "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]}],
          "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(gt))
    return root


def test_analyze_writes_the_report_next_to_the_results(tmp_path, capsys):
    data = _data_dir(tmp_path / "data")
    results = tmp_path / "run" / "results.json"
    results.parent.mkdir()
    results.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [2, 2, 8, 8]},
                                   {"image_id": 1, "category_id": 1, "score": 0.8, "bbox": [12, 12, 6, 6]}]))
    assert main(["analyze", "--results", str(results), "--data", str(data)]) == 0
    out = tmp_path / "run" / "analysis"
    report = json.loads((out / "analysis.json").read_text())
    assert report["iou_types"]["bbox"]["tide"]["counts"]["background"] == 1
    assert (out / "pr_bbox.png").is_file() and (out / report["iou_types"]["bbox"]["gallery"][0]["png"]).is_file()
    assert "| background | 1 |" in capsys.readouterr().out


def test_analyze_bad_results_is_a_one_line_error(tmp_path, capsys):
    data = _data_dir(tmp_path / "data")
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": 5, "category_id": 1, "score": 0.9, "bbox": [2, 2, 8, 8]}]))
    assert main(["analyze", "--results", str(results), "--data", str(data), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "detection 0" in err and "image_id 5" in err and "\n" not in err
