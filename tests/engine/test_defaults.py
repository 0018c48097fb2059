"""The runs as library calls (``blendmask.engine.defaults``): train, evaluate and predict return
what they produced with the task that produced it, on tiny instance and panoptic sets; the data
checks; the demo's steps and files."""
import json
import re

import pytest

from blendmask.data.panoptic import PanopticFormatError
from blendmask.engine import defaults
from blendmask.engine.tasks import INSTANCE, PANOPTIC
from blendmask.output_guard import MANIFEST_FILE, guard_output_dir

SIZE = 64
TINY = {"solver.max_iter": 2, "solver.ims_per_batch": 2, "solver.warmup_iters": 1, "solver.steps": (),
        "solver.checkpoint_period": 0, "input.min_size_train": (SIZE,), "input.max_size_train": SIZE,
        "input.min_size_test": SIZE, "input.max_size_test": SIZE, "model.fcos.inference_th": 0.0}


@pytest.fixture(scope="module")
def data_sets(tmp_path_factory):
    """The task -> a tiny synthetic set of that task (train 4, val 2)."""
    return {task: task.make_shapes(tmp_path_factory.mktemp(task.name), train=4, val=2, size=SIZE, seed=2)
            for task in (INSTANCE, PANOPTIC)}


@pytest.fixture(scope="module", params=[INSTANCE, PANOPTIC], ids=lambda task: task.name)
def trained(request, data_sets, tmp_path_factory):
    """(task, data, TrainReport, the announced lines) of a 2-iteration run without --config."""
    task, announced = request.param, []
    overrides = {**TINY, "model.panoptic.stuff_area_limit": 16} if task is PANOPTIC else TINY
    report = defaults.train(data=data_sets[task], output=tmp_path_factory.mktemp("train"), overrides=overrides,
                            backbone_weights="none", announce=announced.append)
    return task, data_sets[task], report, announced


def test_train_takes_the_task_and_the_preset_of_the_data(trained):
    task, data, report, announced = trained
    assert report.task is task and report.cfg.name == task.default_config
    assert report.result.final_checkpoint.is_file() and report.result.iteration == 2
    assert report.result.eval_results  # the val split of the directory was evaluated at the end
    classes = "4 classes + 3 stuff" if task is PANOPTIC else "4 classes"
    assert announced == [(f"training {task.default_config} on 4 images ({classes}) for 2 iterations, batch 2, "
                          f"output {report.result.output_dir}")]


def test_evaluate_returns_the_metrics_of_the_weights_task_and_writes_them(trained, tmp_path):
    task, data, report, _ = trained
    evaluation = defaults.evaluate(report.result.final_checkpoint, data, output=tmp_path / "eval")
    assert evaluation.task is task
    assert set(evaluation.metrics) >= ({"All", "Things", "Stuff"} if task is PANOPTIC else {"bbox", "segm"})
    assert evaluation.results_path == tmp_path / "eval" / task.results_file and evaluation.results_path.is_file()
    assert json.loads(evaluation.metrics_path.read_text()).keys() == evaluation.metrics.keys()
    assert evaluation.compile_report is None


def test_evaluate_refuses_data_of_the_other_task(trained, data_sets, tmp_path):
    task, _, report, _ = trained
    other = PANOPTIC if task is INSTANCE else INSTANCE
    expected = re.escape(f"holds COCO {other.data_format} data, but {task.expected_data} are expected here")
    with pytest.raises(PanopticFormatError, match=expected):
        defaults.evaluate(report.result.final_checkpoint, data_sets[other], output=tmp_path / "eval")


def test_predict_writes_the_files_of_the_weights_task(trained, tmp_path):
    task, data, report, _ = trained
    images = sorted((data / "val").glob("*.png"))
    prediction = defaults.predict(report.result.final_checkpoint, images, tmp_path / "p", score_threshold=0.0,
                                  show_bases=True)
    assert prediction.task is task
    suffix = "_panoptic.png" if task is PANOPTIC else "_pred.png"
    assert prediction.files.overlays == [tmp_path / "p" / f"{image.stem}{suffix}" for image in images]
    assert all(path.is_file() for path in prediction.files.overlays + prediction.files.bases_figures)
    assert len(prediction.files.bases_figures) == (0 if task is PANOPTIC else len(images))
    records = json.loads(prediction.files.results_json.read_text())["images"]
    assert [record["file"] for record in records] == [str(image) for image in images]


def test_load_dataset_refuses_the_other_format_in_one_line_with_a_hint(data_sets):
    with pytest.raises(PanopticFormatError) as error:
        defaults.load_dataset(data_sets[PANOPTIC], "train", task=INSTANCE)
    assert str(error.value) == (f"--data {data_sets[PANOPTIC]} holds COCO panoptic data, but COCO instance "
                                "annotations are expected here; use a panoptic config (e.g. "
                                "lite_mobilenet_v2_panoptic) or panoptic weights")
    with pytest.raises(PanopticFormatError) as error:
        defaults.load_dataset(data_sets[INSTANCE], "val", task=PANOPTIC)
    assert str(error.value).endswith("holds COCO instances data, but COCO panoptic data (a panoptic config) are "
                                     "expected here")
    assert defaults.load_dataset(data_sets[PANOPTIC], "val").num_stuff_classes == 3  # no task: the data's


def test_val_source(data_sets, tmp_path):
    data = data_sets[INSTANCE]
    assert defaults.val_source(data, None) == str(data)
    assert defaults.val_source(data_sets[PANOPTIC], None) == str(data_sets[PANOPTIC])  # the panoptic val split
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "panoptic_train.json").write_text("{}")
    assert defaults.val_source(tmp_path, None) is None  # a panoptic directory without a val split
    assert defaults.val_source(data / "annotations" / "instances_train.json", None) is None  # a JSON: training only
    assert defaults.val_source(data / "annotations" / "instances_train.json", data) == str(data)
    with pytest.raises(FileNotFoundError, match="^--val-data '.*missing' does not exist"):
        defaults.val_source(data, tmp_path / "missing")


def test_train_refuses_a_class_count_the_data_does_not_have(data_sets, tmp_path):
    with pytest.raises(ValueError, match="--set model.num_classes=3 but the data set has 4 categories"):
        defaults.train(data=data_sets[INSTANCE], output=tmp_path, overrides={**TINY, "model.num_classes": 3},
                       backbone_weights="none")
    assert not any(tmp_path.iterdir())


def test_the_panoptic_demo_runs_every_step_and_lists_its_files(tmp_path):
    announced = []
    report = defaults.demo(output=tmp_path / "demo", task=PANOPTIC, fast=True, announce=announced.append)
    steps = [line for line in announced if line.startswith("[")]
    assert [line[:5] for line in steps] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert steps[0].startswith("[1/4] generating the synthetic panoptic set (16 train + 4 val, 128 px)")
    assert report.task is PANOPTIC and report.val_images == 4 and {"All", "Things", "Stuff"} <= set(report.metrics)
    labels = [label for label, _ in report.outputs]
    assert labels == ["weights", "loss curve", "results JSON", "predictions"]
    assert all(path.is_file() for _, path in report.outputs)
    assert len(report.pictures) == 4 and all(path.name.endswith("_panoptic.png") for path in report.pictures)
    assert (tmp_path / "demo" / defaults.DEMO_MARKER).is_file()


def test_the_demo_replaces_only_a_directory_a_demo_made(tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="was not made by 'blendmask demo'"):
        defaults.demo(output=precious, fast=True)
    assert (precious / "notes.txt").read_text() == "keep me"
    made = tmp_path / "made"

    def prepare():
        with guard_output_dir(made, command="blendmask demo", owned_marker=defaults.DEMO_MARKER) as guard:
            defaults.prepare_demo_output(guard)

    prepare()
    (made / "old.txt").write_text("from the last demo")  # made under an earlier demo's marker: ours
    prepare()
    assert sorted(path.name for path in made.iterdir()) == [defaults.DEMO_MARKER, MANIFEST_FILE]


def test_the_training_engine_loads_without_the_runs():
    """``import blendmask.engine`` (the training loop) loads neither the runs nor the tasks, nor the
    evaluation and prediction code they use."""
    import subprocess
    import sys

    code = "import sys, blendmask.engine; print(' '.join(sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(proc.stdout.split())
    assert "blendmask.engine" in loaded
    assert not loaded & {"blendmask.engine.defaults", "blendmask.engine.tasks", "blendmask.predict",
                         "blendmask.evaluation"}
