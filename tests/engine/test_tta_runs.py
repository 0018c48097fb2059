"""``tta_sizes`` of ``defaults.evaluate`` / ``defaults.predict``: the instance task's evaluator and
predictor run the model under test-time augmentation at those sizes (empty: the default ones);
panoptic weights and ``show_bases`` refuse it in one line."""
import json

import pytest

from blendmask.engine import defaults
from blendmask.engine.tasks import INSTANCE, PANOPTIC
from blendmask.models.tta import TestTimeAugmentation, default_test_sizes

SIZE = 64
TINY = {"solver.max_iter": 1, "solver.ims_per_batch": 2, "solver.warmup_iters": 1, "solver.steps": (),
        "solver.checkpoint_period": 0, "input.min_size_train": (SIZE,), "input.max_size_train": SIZE,
        "input.min_size_test": SIZE, "input.max_size_test": SIZE, "model.fcos.inference_th": 0.0}


def _weights(task, root):
    data = task.make_shapes(root / "data", train=2, val=1, size=SIZE, seed=3)
    overrides = {**TINY, "model.panoptic.stuff_area_limit": 16} if task is PANOPTIC else TINY
    report = defaults.train(data=data, output=root / "train", overrides=overrides, backbone_weights="none",
                            evaluate_on_val=False)
    return data, report.result.final_checkpoint


@pytest.fixture(scope="module")
def instance_run(tmp_path_factory):
    return _weights(INSTANCE, tmp_path_factory.mktemp("instance"))


@pytest.mark.parametrize("tta_sizes, expected", [(None, None), ([48, 80], (48, 80)), ([], "default")])
def test_evaluate_hands_the_evaluator_the_model_under_tta(instance_run, tmp_path, monkeypatch, tta_sizes, expected):
    data, weights = instance_run
    seen = []
    monkeypatch.setattr(INSTANCE, "evaluate", lambda model, dataset, **kwargs: seen.append(model) or {})
    defaults.evaluate(weights, data, output=tmp_path / "eval", tta_sizes=tta_sizes)
    (model,) = seen
    if expected is None:
        assert not isinstance(model, TestTimeAugmentation)
    else:
        assert isinstance(model, TestTimeAugmentation)
        assert model.sizes == (default_test_sizes(SIZE) if expected == "default" else expected)


def test_evaluate_with_tta_writes_coco_metrics(instance_run, tmp_path):
    data, weights = instance_run
    report = defaults.evaluate(weights, data, output=tmp_path / "eval", tta_sizes=[48, 64])
    assert set(report.metrics) >= {"bbox", "segm"} and report.results_path.is_file()


def test_predict_with_tta_uses_a_tta_predictor_and_refuses_show_bases(instance_run, tmp_path):
    data, weights = instance_run
    images = sorted((data / "val").glob("*.png"))
    report = defaults.predict(weights, images, tmp_path / "p", score_threshold=0.0, tta_sizes=[])
    assert [record["file"] for record in json.loads(report.files.results_json.read_text())["images"]] == \
        [str(image) for image in images]
    assert all(path.is_file() for path in report.files.overlays) and len(report.files.overlays) == len(images)
    with pytest.raises(ValueError, match="--show-bases"):
        defaults.predict(weights, images, tmp_path / "q", tta_sizes=[], show_bases=True)
    predictor = INSTANCE.load_predictor(weights, tta_sizes=[56])
    assert isinstance(predictor.model, TestTimeAugmentation) and predictor.model.sizes == (56,)


def test_panoptic_weights_refuse_tta_in_one_line(tmp_path):
    data, weights = _weights(PANOPTIC, tmp_path)
    for call in (lambda: defaults.evaluate(weights, data, output=tmp_path / "eval", tta_sizes=[]),
                 lambda: defaults.predict(weights, sorted((data / "val").glob("*.png")), tmp_path / "p",
                                          tta_sizes=[])):
        with pytest.raises(ValueError, match="--tta works on instance models, not on panoptic weights") as info:
            call()
        assert "\n" not in str(info.value)


def test_tta_and_tiles_do_not_combine(instance_run, tmp_path):
    data, weights = instance_run
    with pytest.raises(ValueError, match="--tta and --tile do not combine"):
        defaults.evaluate(weights, data, output=tmp_path / "eval", tta_sizes=[], tile=32)
    with pytest.raises(ValueError, match="--tta and --tile do not combine"):
        defaults.predict(weights, sorted((data / "val").glob("*.png")), tmp_path / "p", tta_sizes=[], tile=32)
