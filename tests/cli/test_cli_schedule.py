"""``blendmask train`` refuses a schedule step beyond ``solver.max_iter`` in one line, before it
writes anything; a run resumed with a larger ``max_iter`` sets the steps it reaches."""
import json

import pytest
import torch

from blendmask.cli import main
from tests.helpers.cli import IMAGE_SIDE, TINY_RUN_SET, error_line

WITHOUT_STEPS = [item for item in TINY_RUN_SET if not item.startswith("solver.steps=")]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    assert main(["make-shapes", str(out), "--train", "4", "--val", "0", "--size", str(IMAGE_SIDE), "--seed", "2"]) == 0
    return out


def _train(shapes, out, *settings, resume=False):
    return main(["train", "--data", str(shapes), "--output", str(out), "--backbone-weights", "none",
                 *(["--resume"] if resume else []), "--set", *WITHOUT_STEPS, "solver.checkpoint_period=2", *settings])


def test_the_presets_steps_beyond_a_shortened_max_iter_are_refused_before_anything_is_written(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(shapes, out, "solver.max_iter=2") == 1
    assert error_line(capsys) == ("error: solver.steps [1500, 1800] go beyond solver.max_iter=2 (step 1500 is never "
                                  "reached): lower the steps, or set solver.steps=() for no decay")
    assert not out.exists()


def test_resume_with_a_larger_max_iter_reaches_the_steps_it_sets(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(shapes, out, "solver.max_iter=2", "solver.steps=()") == 0
    first = torch.load(out / "model_final.pth", weights_only=True)["config"]["solver"]
    assert (first["max_iter"], first["steps"]) == (2, [])

    capsys.readouterr()
    assert _train(shapes, out, "solver.max_iter=4", "solver.steps=(5,)", resume=True) == 1
    assert error_line(capsys).startswith("error: solver.steps [5] go beyond solver.max_iter=4")
    assert (out / "last_checkpoint").read_text() == "model_final.pth"

    assert _train(shapes, out, "solver.max_iter=4", "solver.steps=(3,)", resume=True) == 0
    resumed = torch.load(out / "model_final.pth", weights_only=True)
    assert resumed["iteration"] == 4
    assert (resumed["config"]["solver"]["max_iter"], resumed["config"]["solver"]["steps"]) == (4, [3])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss_total" in line]
    lrs = {record["iteration"]: record["lr"] for record in records}
    assert sorted(lrs) == [1, 2, 3, 4]
    assert lrs[4] == pytest.approx(lrs[3] * 0.1)  # the step at 3 that the first run's max_iter=2 could not hold
