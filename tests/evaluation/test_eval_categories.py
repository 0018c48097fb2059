"""Evaluation scores a model's classes as the data set's categories of the same name, refuses data
whose names differ (one line, names and ids side by side) unless mapped, and writes strict JSON."""
import json

import pytest

from blendmask.cli import main
from blendmask.evaluation.categories import CategoryMismatchError, match_categories, parse_class_map

NAMES = ["circle", "rectangle", "triangle", "ellipse"]
IDS = [1, 2, 3, 4]


def _match(data_names, data_ids=IDS, **options):
    return match_categories(NAMES, IDS, data_names, data_ids, weights="w.pth", data="d", **options)


def test_same_names_in_order_keep_the_data_ids():
    assert _match(NAMES, [10, 20, 30, 40]) == [10, 20, 30, 40]


def test_the_same_names_in_another_order_are_matched_by_name():
    assert _match(["rectangle", "circle", "ellipse", "triangle"]) == [2, 1, 4, 3]


def test_other_names_are_refused_side_by_side():
    with pytest.raises(CategoryMismatchError) as error:
        _match(["cat", "dog", "bird", "fish"])
    assert str(error.value) == (
        "w.pth was trained on categories [1:circle, 2:rectangle, 3:triangle, 4:ellipse] but d has "
        "[1:cat, 2:dog, 3:bird, 4:fish]: give --class-map MODEL_CLASS=DATA_CLASS,... or --ignore-class-names "
        "to score them in order")


def test_a_class_map_and_ignore_class_names_resolve_it():
    data = ["cat", "dog", "bird", "fish"]
    mapping = parse_class_map("circle=dog, rectangle=cat,triangle=fish,ellipse=bird")
    assert _match(data, class_map=mapping) == [2, 1, 4, 3]
    assert _match(data, ignore_class_names=True) == IDS


@pytest.mark.parametrize("text, needle", [("circle", "expected MODEL_CLASS=DATA_CLASS"),
                                          ("circle=a,circle=b", "mapped twice")])
def test_bad_class_maps(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_class_map(text)


@pytest.mark.parametrize("mapping, needle", [({"square": "cat"}, "has no class 'square'"),
                                             ({"circle": "cow"}, "has no category 'cow'"),
                                             ({"circle": "rectangle"}, "two model classes are scored as")])
def test_class_maps_that_do_not_fit(mapping, needle):
    with pytest.raises(CategoryMismatchError, match=needle):
        _match(NAMES, class_map=mapping)


TINY = 64
TINY_SET = ["solver.ims_per_batch=2", "solver.warmup_iters=1", "solver.steps=()", "solver.max_iter=1",
            "solver.checkpoint_period=0", f"input.min_size_train=({TINY},)", f"input.max_size_train={TINY}",
            f"input.min_size_test={TINY}", f"input.max_size_test={TINY}"]


def test_eval_cli_refuses_other_categories_and_writes_strict_json(tmp_path, capsys):
    data = tmp_path / "shapes"
    assert main(["make-shapes", str(data), "--train", "2", "--val", "2", "--size", str(TINY)]) == 0
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "run"), "--backbone-weights", "none",
                 "--set", *TINY_SET]) == 0
    weights = str(tmp_path / "run" / "model_final.pth")
    renamed = json.loads((data / "annotations" / "instances_val.json").read_text())
    for category, name in zip(sorted(renamed["categories"], key=lambda c: c["id"]), ["cat", "dog", "bird", "fish"]):
        category["name"] = name
    other = data / "annotations" / "other.json"
    other.write_text(json.dumps(renamed))
    (data / "annotations" / "images").symlink_to(data / "val")
    capsys.readouterr()
    assert main(["eval", "--weights", weights, "--data", str(other), "--output", str(tmp_path / "e1")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[1:circle, 2:rectangle, 3:triangle, 4:ellipse] but" in err[0] and "[1:cat," in err[0]
    assert main(["eval", "--weights", weights, "--data", str(other), "--output", str(tmp_path / "e2"),
                 "--ignore-class-names"]) == 0
    text = (tmp_path / "e2" / "metrics.json").read_text()
    assert "NaN" not in text
    metrics = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
    assert metrics["segm"]["APl"] is None  # no large objects in 64 px images
