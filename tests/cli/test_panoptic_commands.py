"""The panoptic paths of the ``blendmask`` command on a tiny synthetic panoptic set; the slow demo figure."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from blendmask.cli import main
from tests.helpers.cli import IMAGE_SIDE, TINY_RUN_SET, error_line

TINY_PANOPTIC_RUN_SET = [*TINY_RUN_SET, "model.panoptic.stuff_area_limit=16"]


@pytest.fixture(scope="module")
def panoptic_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("panoptic_shapes")
    assert main(["make-shapes", str(out), "--panoptic", "--train", "4", "--val", "2", "--size", str(IMAGE_SIDE)]) == 0
    return out


@pytest.fixture(scope="module")
def instance_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    assert main(["make-shapes", str(out), "--train", "2", "--val", "1", "--size", str(IMAGE_SIDE)]) == 0
    return out


@pytest.fixture(scope="module")
def trained(panoptic_set, tmp_path_factory):
    """``train`` on panoptic data without --config picks lite_mobilenet_v2_panoptic (and evaluates PQ)."""
    out = tmp_path_factory.mktemp("train")
    code = main(["train", "--data", str(panoptic_set), "--output", str(out), "--backbone-weights", "none",
                 "--set", "solver.max_iter=3", "solver.checkpoint_period=0", *TINY_PANOPTIC_RUN_SET])
    assert code == 0
    return out


def test_make_shapes_panoptic_writes_the_coco_panoptic_layout(panoptic_set):
    data = json.loads((panoptic_set / "annotations" / "panoptic_val.json").read_text())
    assert {c["name"]: c["isthing"] for c in data["categories"]} == {
        "circle": 1, "rectangle": 1, "triangle": 1, "ellipse": 1, "sky": 0, "ground": 0, "water": 0}
    assert len(list((panoptic_set / "annotations" / "panoptic_val").glob("*.png"))) == 2
    assert len(list((panoptic_set / "train").glob("*.png"))) == 4


def test_train_eval_predict_on_panoptic_data(trained, panoptic_set, tmp_path, capsys):
    weights = trained / "model_final.pth"
    assert weights.is_file()
    capsys.readouterr()
    assert main(["eval", "--weights", str(weights), "--data", str(panoptic_set), "--output", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^All\s+[\d.-]+", out, re.M) and "Things" in out and "Stuff" in out and "sky" in out
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert set(metrics) >= {"All", "Things", "Stuff", "per_category"}
    results = json.loads((tmp_path / "e" / "panoptic_results.json").read_text())
    assert len(results["annotations"]) == 2
    image = sorted((panoptic_set / "val").glob("*.png"))[0]
    assert main(["predict", str(image), "--weights", str(weights), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / f"{image.stem}_panoptic.png").is_file()
    record = json.loads((tmp_path / "p" / "panoptic_predictions.json").read_text())["images"][0]
    assert record["height"] == IMAGE_SIDE and isinstance(record["segments_info"], list)


def test_the_other_format_is_a_one_line_error(trained, panoptic_set, instance_set, tmp_path, capsys):
    weights = trained / "model_final.pth"
    assert main(["eval", "--weights", str(weights), "--data", str(instance_set), "--output", str(tmp_path / "a")]) == 1
    assert "holds COCO instances data, but COCO panoptic data" in error_line(capsys)
    assert main(["train", "--config", "lite_mobilenet_v2", "--data", str(panoptic_set),
                 "--output", str(tmp_path / "b"), "--backbone-weights", "none"]) == 1
    assert "holds COCO panoptic data, but COCO instance annotations are expected" in error_line(capsys)
    assert main(["train", "--config", "lite_mobilenet_v2_panoptic", "--data", str(instance_set),
                 "--output", str(tmp_path / "c"), "--backbone-weights", "none"]) == 1
    assert "holds COCO instances data" in error_line(capsys)


def test_a_broken_png_is_a_one_line_error_naming_file_and_segment(panoptic_set, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(panoptic_set, broken)
    path = broken / "annotations" / "panoptic_train.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["segments_info"].append({"id": 99, "category_id": 5, "iscrowd": 0})
    path.write_text(json.dumps(data))
    code = main(["train", "--data", str(broken), "--output", str(tmp_path / "t"), "--backbone-weights", "none",
                 "--set", "solver.max_iter=1", *TINY_PANOPTIC_RUN_SET])
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]  # after tqdm's bar
    assert len(errors) == 1
    assert re.search(r"000001\.png: segment id 99 \(category 5\) of segments_info is not in the PNG", errors[0])


@pytest.mark.slow
def test_panoptic_demo_reaches_the_pq_goal(tmp_path):
    """``blendmask demo --panoptic``: PQ >= 0.6 on the synthetic panoptic val split (README figure)."""
    proc = subprocess.run([sys.executable, "-m", "blendmask", "demo", "--panoptic", "--output", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "d" / "eval" / "metrics.json").read_text())
    assert metrics["All"]["PQ"] >= 0.6, metrics["All"]
    assert (tmp_path / "d" / "predictions" / "000001_panoptic.png").is_file()


def test_make_shapes_refuses_overwrite_with_panoptic(tmp_path, capsys):
    out = tmp_path / "pan"
    assert main(["make-shapes", str(out), "--panoptic", "--overwrite", "--train", "1", "--val", "1",
                 "--size", str(IMAGE_SIDE)]) == 2
    assert "--overwrite does not apply with --panoptic" in capsys.readouterr().err
    assert not out.exists()
