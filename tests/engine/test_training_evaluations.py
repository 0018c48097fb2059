"""Evaluations during training keep their own results file and say their headline figures; the
panoptic task refuses the instance-only evaluation and prediction options in one line."""
import re

import pytest

from blendmask.cli import main
from blendmask.engine.tasks import PANOPTIC

SIZE = 64
TINY = ["solver.max_iter=2", "solver.eval_period=1", "solver.ims_per_batch=2", "solver.warmup_iters=1",
        "solver.steps=()", "solver.checkpoint_period=0", f"input.min_size_train=({SIZE},)",
        f"input.max_size_train={SIZE}", f"input.min_size_test={SIZE}", f"input.max_size_test={SIZE}",
        "model.fcos.inference_th=0.0"]
AP_LINE = r"bbox AP=\d\.\d{3} AP50=\d\.\d{3}, segm AP=\d\.\d{3} AP50=\d\.\d{3}"


def test_each_evaluation_during_training_keeps_its_results_and_prints_its_ap(tmp_path, capsys):
    assert main(["make-shapes", str(tmp_path / "shapes"), "--train", "4", "--val", "2", "--size", str(SIZE),
                 "--seed", "2"]) == 0
    assert main(["train", "--data", str(tmp_path / "shapes"), "--output", str(tmp_path / "run"),
                 "--backbone-weights", "none", "--set", *TINY]) == 0
    out = capsys.readouterr().out
    # one evaluation after iteration 1 of 2, one at the end: each its own file, each its AP line
    results = sorted(path.name for path in (tmp_path / "run" / "eval").glob("coco_instances_results*.json"))
    assert results == ["coco_instances_results.json", "coco_instances_results_iter0000001.json"]
    assert re.search(rf"^val at iteration 1: {AP_LINE}$", out, re.M), out
    assert re.search(rf"^val: {AP_LINE}$", out, re.M), out


@pytest.mark.parametrize("options, needle", [({"tile": 64}, "tile (--tile) applies to instance models"),
                                             ({"max_dets": 300}, "max_dets (--max-dets) applies to instance models")])
def test_the_panoptic_task_refuses_tiled_evaluation_and_max_dets(options, needle):
    with pytest.raises(ValueError, match=re.escape(needle)) as error:
        PANOPTIC.evaluate(None, None, **options)  # refused before the model or the data are touched
    assert "\n" not in str(error.value)


def test_the_panoptic_task_refuses_tiled_prediction(tmp_path):
    with pytest.raises(ValueError, match=re.escape("tile (--tile) applies to instance models")):
        PANOPTIC.predict_files(None, [], tmp_path / "out", tile="auto")
    assert not (tmp_path / "out").exists()
