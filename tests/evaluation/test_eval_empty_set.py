"""An evaluation set with nothing to score is a one-line error, not a traceback."""
import json

import pytest

from blendmask.data import CocoInstanceDataset
from blendmask.errors import is_user_error
from blendmask.evaluation import evaluate_model


@pytest.fixture
def empty_set(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "circle"}]}))
    return CocoInstanceDataset(path, tmp_path)


def test_evaluating_an_empty_set_names_it(empty_set):
    with pytest.raises(ValueError, match=r"nothing to evaluate: .*empty.json has no images") as error:
        evaluate_model(lambda images: [], empty_set)
    assert is_user_error(error.value)


def test_training_with_an_empty_val_split_evaluates_nothing(tmp_path, caplog):
    from blendmask.cli import main

    data = tmp_path / "shapes"
    assert main(["make-shapes", str(data), "--train", "2", "--val", "0", "--size", "64"]) == 0
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "run"), "--backbone-weights", "none",
                 "--set", "solver.ims_per_batch=2", "solver.max_iter=1", "solver.steps=()",
                 "input.min_size_train=(64,)", "input.max_size_train=64"]) == 0
    assert f"the val split of {data} has no images: training evaluates nothing" in caplog.text
