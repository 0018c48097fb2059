"""``blendmask eval`` of panoptic weights matches the model's things and stuff to the data set's by
name, as for instance models: other names are refused in one line unless ``--class-map`` maps them
(things onto things, stuff onto stuff) or ``--ignore-class-names`` takes the data set's order."""
import json

import pytest

from blendmask.cli import main
from tests.helpers.cli import error_line

SIZE = 64
# One iteration with every threshold open, so that the untrained model predicts things and stuff.
TINY_SET = ["solver.ims_per_batch=2", "solver.warmup_iters=1", "solver.steps=()", "solver.max_iter=1",
            "solver.checkpoint_period=0", f"input.min_size_train=({SIZE},)", f"input.max_size_train={SIZE}",
            f"input.min_size_test={SIZE}", f"input.max_size_test={SIZE}", "model.panoptic.stuff_area_limit=16",
            "model.fcos.inference_th=0.0", "model.panoptic.instances_score_thresh=0.0",
            "model.panoptic.overlap_thresh=1.0"]
ORIGINAL = {1: "circle", 2: "rectangle", 3: "triangle", 4: "ellipse", 5: "sky", 6: "ground", 7: "water"}
RENAMED = {1: "cat", 2: "dog", 3: "bird", 4: "fish", 5: "cloud", 6: "earth", 7: "sea"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``(data, weights, results of the data set itself)`` of a one-iteration panoptic model."""
    root = tmp_path_factory.mktemp("panoptic")
    data = root / "data"
    assert main(["make-shapes", str(data), "--panoptic", "--train", "2", "--val", "2", "--size", str(SIZE)]) == 0
    assert main(["train", "--data", str(data), "--output", str(root / "run"), "--backbone-weights", "none",
                 "--set", *TINY_SET]) == 0
    weights = root / "run" / "model_final.pth"
    assert main(["eval", "--weights", str(weights), "--data", str(data), "--output", str(root / "own")]) == 0
    own = _segments(root / "own")
    predicted = {category for image in own for _, category in image}
    assert len(predicted & {1, 2, 3, 4}) >= 2 and len(predicted & {5, 6, 7}) >= 2  # things and stuff predicted
    return data, weights, own


def _with_names(data, out, names):
    """A copy of ``data``'s val split whose categories are called ``names`` (id -> name)."""
    (out / "annotations").mkdir(parents=True)
    annotations = json.loads((data / "annotations" / "panoptic_val.json").read_text())
    for category in annotations["categories"]:
        category["name"] = names[category["id"]]
    (out / "annotations" / "panoptic_val.json").write_text(json.dumps(annotations))
    (out / "annotations" / "panoptic_val").symlink_to(data / "annotations" / "panoptic_val")
    (out / "val").symlink_to(data / "val")
    return out


def _segments(eval_dir):
    """Per image, the ``(segment id, category id)`` of every predicted segment."""
    results = json.loads((eval_dir / "panoptic_results.json").read_text())
    return [sorted((s["id"], s["category_id"]) for s in image["segments_info"]) for image in results["annotations"]]


def _relabelled(segments, new_id):
    return [sorted((segment, new_id[category]) for segment, category in image) for image in segments]


def _eval(weights, data, out, *options):
    return main(["eval", "--weights", str(weights), "--data", str(data), "--output", str(out), *options])


def test_other_names_are_refused_things_and_stuff_side_by_side(run, tmp_path, capsys):
    data, weights, _ = run
    other = _with_names(data, tmp_path / "other", RENAMED)
    capsys.readouterr()
    assert _eval(weights, other, tmp_path / "e") == 1
    assert error_line(capsys) == (
        f"error: {weights} was trained on categories [1:circle, 2:rectangle, 3:triangle, 4:ellipse, 5:sky, "
        f"6:ground, 7:water] but {other} has [1:cat, 2:dog, 3:bird, 4:fish, 5:cloud, 6:earth, 7:sea]: give "
        "--class-map MODEL_CLASS=DATA_CLASS,... or --ignore-class-names to score them in order")
    assert not (tmp_path / "e").exists()


def test_other_stuff_names_alone_are_refused(run, tmp_path, capsys):
    data, weights, _ = run
    other = _with_names(data, tmp_path / "other", {**ORIGINAL, 5: "cloud"})
    capsys.readouterr()
    assert _eval(weights, other, tmp_path / "e") == 1
    assert "5:sky, 6:ground, 7:water] but" in error_line(capsys)


def test_a_class_map_scores_things_and_stuff_as_the_mapped_categories(run, tmp_path):
    data, weights, own = run
    other = _with_names(data, tmp_path / "other", RENAMED)
    mapping = "circle=dog,rectangle=cat,triangle=fish,ellipse=bird,sky=sea,ground=cloud,water=earth"
    assert _eval(weights, other, tmp_path / "e", "--class-map", mapping) == 0
    assert _segments(tmp_path / "e") == _relabelled(own, {1: 2, 2: 1, 3: 4, 4: 3, 5: 7, 6: 5, 7: 6})


def test_the_same_names_in_another_order_are_scored_by_name(run, tmp_path):
    data, weights, own = run
    swapped = {**ORIGINAL, 1: "rectangle", 2: "circle", 5: "ground", 6: "sky"}
    other = _with_names(data, tmp_path / "other", swapped)
    assert _eval(weights, other, tmp_path / "e") == 0
    assert _segments(tmp_path / "e") == _relabelled(own, {1: 2, 2: 1, 3: 3, 4: 4, 5: 6, 6: 5, 7: 7})


def test_ignore_class_names_scores_the_data_sets_categories_in_order(run, tmp_path):
    data, weights, own = run
    other = _with_names(data, tmp_path / "other", RENAMED)
    assert _eval(weights, other, tmp_path / "e", "--ignore-class-names") == 0
    assert _segments(tmp_path / "e") == own


def test_a_thing_is_never_scored_as_stuff(run, tmp_path, capsys):
    data, weights, _ = run
    other = _with_names(data, tmp_path / "other", RENAMED)
    mapping = "circle=cloud,rectangle=dog,triangle=bird,ellipse=fish,sky=cat,ground=earth,water=sea"
    capsys.readouterr()
    assert _eval(weights, other, tmp_path / "e", "--class-map", mapping) == 1
    assert error_line(capsys) == (f"error: {weights}: its thing class 'circle' cannot be scored as {other}'s stuff "
                                  "category 'cloud' (things are scored as things, stuff as stuff)")
