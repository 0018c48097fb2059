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
