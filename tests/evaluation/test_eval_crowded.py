"""COCO evaluation of crowded images is bounded: the detection/ground-truth pairs COCOeval would
match are counted before it starts, and more than the limit is refused in one line naming the
count, the largest image, the limit and how to raise it; the predictions are kept."""
import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from blendmask.cli import build_parser, main
from blendmask.evaluation.coco_eval import (BACKENDS, DEFAULT_MAX_PAIRS, COCOEvaluator, EvaluationTooLargeError,
                                            matching_pairs)


def _squares(boxes, size):
    """COCO RLEs (string counts) of the xywh ``boxes`` in a ``size`` x ``size`` image."""
    return [{"size": [size, size], "counts": r["counts"].decode("ascii")}
            for r in mask_utils.frPyObjects(np.asarray(boxes, np.float64), size, size)]


def _ground_truth(instances, size=64):
    """A COCO of images ``1..`` holding ``instances[image_id] = {category_id: count}`` squares."""
    images, annotations = [], []
    for image_id, counts in instances.items():
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": size, "width": size})
        for category_id, count in counts.items():
            boxes = [[(3 * i) % (size - 4), (7 * i) % (size - 4), 4, 4] for i in range(count)]
            for box, rle in zip(boxes, _squares(boxes, size)):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                    "iscrowd": 0, "area": 16.0, "bbox": [float(v) for v in box], "segmentation": rle})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _output(labels, size=64):
    """A model output of one 4 px square per label (contiguous: 0 is category 3, 1 is category 7)."""
    n = len(labels)
    boxes = [[(5 * i) % (size - 4), (11 * i) % (size - 4), 4, 4] for i in range(n)]
    return {"boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32).reshape(n, 4),
            "labels": torch.tensor(labels, dtype=torch.long), "scores": torch.linspace(1, 0.1, n),
            "masks_rle": _squares(boxes, size) if n else []}


def test_matching_pairs_are_the_first_max_dets_detections_times_the_instances():
    gt = _ground_truth({1: {3: 3, 7: 2}, 2: {3: 1}})
    results = ([{"image_id": 1, "category_id": 3}] * 12 + [{"image_id": 1, "category_id": 7}]
               + [{"image_id": 2, "category_id": 7}] * 4)  # no category-7 instance in image 2: no pairs
    assert matching_pairs(gt, results, [1, 2], max_dets=10) == (10 * 3 + 1 * 2, (1, 3, 10, 3))
    assert matching_pairs(gt, results, [2], max_dets=10) == (0, None)


def _crowded_evaluator(tmp_path, **options):
    """Image 1: 12 detections of 'cat' (3 instances) and one of 'dog' (2): 10 x 3 + 1 x 2 = 32 pairs
    at max_dets 10; image 2: no detections."""
    gt = _ground_truth({1: {3: 3, 7: 2}, 2: {3: 1}})
    return COCOEvaluator(gt, [3, 7], output_dir=tmp_path, **{"max_dets": 10, **options})


def _faster(limit):
    return f", or --eval-backend faster-coco-eval (limit {limit:,})"


def test_the_image_that_crosses_the_limit_is_refused_before_the_next_one_is_predicted(tmp_path):
    evaluator = _crowded_evaluator(tmp_path, max_pairs=31)
    evaluator.process([2], [_output([])])
    with pytest.raises(EvaluationTooLargeError) as refused:
        evaluator.process([1], [_output([0] * 12 + [1])])
    assert str(refused.value) == (
        "COCO evaluation would match 32 detection/ground-truth pairs after 2 images, more than the limit of 31 for "
        "pycocotools (image id 1: 10 detections x 3 instances of 'cat'): raise it with --max-eval-pairs N (max_pairs)"
        + _faster(DEFAULT_MAX_PAIRS["faster-coco-eval"]))


def test_the_total_of_all_ranks_is_refused_before_cocoeval_keeping_the_predictions(tmp_path, monkeypatch):
    def cocoeval_ran(self):
        raise AssertionError("COCOeval ran")

    evaluator = _crowded_evaluator(tmp_path, max_pairs=31)
    evaluator.process([1], [_output([0] * 8)])  # 24 pairs on this rank
    other_rank = [{**record, "image_id": 2} for record in evaluator._results]  # 8 x 1 pairs on the other
    monkeypatch.setattr(evaluator, "_gathered", lambda: (evaluator._results + other_rank, [1, 2]))
    monkeypatch.setattr(COCOeval, "evaluate", cocoeval_ran)
    with pytest.raises(EvaluationTooLargeError) as refused:
        evaluator.evaluate()
    results = tmp_path / "coco_instances_results.json"
    assert str(refused.value) == (
        "COCO evaluation would match 32 detection/ground-truth pairs on 2 images, more than the limit of 31 for "
        "pycocotools (image id 1: 8 detections x 3 instances of 'cat'): raise it with --max-eval-pairs N (max_pairs)"
        + _faster(DEFAULT_MAX_PAIRS["faster-coco-eval"]) + f"; the predictions are in {results}")
    assert len(json.loads(results.read_text())) == 16


def test_an_evaluation_at_the_limit_runs(tmp_path):
    evaluator = _crowded_evaluator(tmp_path, max_pairs=32)
    evaluator.process([1, 2], [_output([0] * 12 + [1]), _output([])])
    assert set(evaluator.evaluate()) == {"bbox", "segm"}


def test_the_default_limit_refuses_a_crowded_image_at_once():
    """20,000 instances and 300 detections in one image: 6,000,000 pairs, above pycocotools' default."""
    size, n = 1500, 20000
    boxes = [[(37 * i) % (size - 16), (101 * i) % (size - 16), 8, 8] for i in range(n)]
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "file_name": "crowd.png", "height": size, "width": size}],
                  "annotations": [{"id": i + 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 64.0,
                                   "bbox": box, "segmentation": rle} for i, (box, rle) in
                                  enumerate(zip(boxes, _squares(boxes, size)))],
                  "categories": [{"id": 3, "name": "cat"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    evaluator = COCOEvaluator(gt, [3], max_dets=300)
    with pytest.raises(EvaluationTooLargeError, match=r"would match 6,000,000 detection/ground-truth pairs after 1 "
                                                      r"image, more than the limit of 5,000,000 for pycocotools"):
        evaluator.process([1], [_output([0] * 300, size)])
    assert DEFAULT_MAX_PAIRS["pycocotools"] == 5_000_000


def test_bad_max_pairs_are_refused():
    gt = _ground_truth({1: {3: 1}})
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="max_pairs must be an integer >= 1"):
            COCOEvaluator(gt, [3, 7], max_pairs=bad)


def test_the_faster_backend_works_on_its_own_copy_of_the_ground_truth(tmp_path):
    pytest.importorskip("faster_coco_eval")
    evaluator = _crowded_evaluator(tmp_path, backend="faster-coco-eval")
    reference = _crowded_evaluator(tmp_path)
    for each in (evaluator, reference):
        each.process([1, 2], [_output([0] * 12 + [1]), _output([])])
    before = copy.deepcopy(evaluator.coco_gt.dataset)
    metrics, reference = evaluator.evaluate(), reference.evaluate()
    assert evaluator.coco_gt.dataset == before
    assert metrics["segm"]["AP"] == pytest.approx(reference["segm"]["AP"], abs=1e-4)


def test_the_eval_command_offers_every_backend_and_names_the_limit(tmp_path, capsys):
    eval_parser = build_parser()._subparsers._group_actions[0].choices["eval"]
    backend = next(action for action in eval_parser._actions if action.dest == "eval_backend")
    assert tuple(backend.choices) == BACKENDS and backend.default == "pycocotools"
    data = tmp_path / "shapes"
    assert main(["make-shapes", str(data), "--train", "2", "--val", "1", "--size", "64"]) == 0
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "run"), "--backbone-weights", "none",
                 "--set", "solver.ims_per_batch=2", "solver.warmup_iters=1", "solver.steps=()", "solver.max_iter=1",
                 "solver.checkpoint_period=0", "input.min_size_train=(64,)", "input.max_size_train=64",
                 "input.min_size_test=64", "input.max_size_test=64", "model.fcos.inference_th=0.0"]) == 0
    capsys.readouterr()
    assert main(["eval", "--weights", str(tmp_path / "run" / "model_final.pth"), "--data", str(data),
                 "--output", str(tmp_path / "e"), "--max-eval-pairs", "1"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]  # after tqdm's bar
    assert len(errors) == 1
    line = errors[0]
    assert line.startswith("error: COCO evaluation would match ") and " pairs after 1 image, more than the limit of " \
        "1 for pycocotools (image id " in line and "raise it with --max-eval-pairs N" in line


def test_train_bounds_its_evaluations_as_eval_does(tmp_path, capsys):
    data = tmp_path / "shapes"
    assert main(["make-shapes", str(data), "--train", "2", "--val", "1", "--size", "64"]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "run"), "--backbone-weights", "none",
                 "--max-eval-pairs", "1", "--eval-backend", "pycocotools",
                 "--set", "solver.ims_per_batch=2", "solver.warmup_iters=1", "solver.steps=()", "solver.max_iter=1",
                 "solver.checkpoint_period=0", "input.min_size_train=(64,)", "input.max_size_train=64",
                 "input.min_size_test=64", "input.max_size_test=64", "model.fcos.inference_th=0.0"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: COCO evaluation would match ") \
        and "more than the limit of 1 for pycocotools" in errors[0]
    assert (tmp_path / "run" / "model_final.pth").is_file()  # the weights are kept


def test_train_refuses_evaluation_bounds_for_a_panoptic_model(tmp_path):
    from blendmask.engine import defaults

    with pytest.raises(ValueError, match=r"--eval-backend and --max-eval-pairs apply to instance models \(COCO AP\); "
                                         r"lite_mobilenet_v2_panoptic is a panoptic model"):
        defaults.train(data=tmp_path / "nothing", output=tmp_path / "run", config="lite_mobilenet_v2_panoptic",
                       max_eval_pairs=10)
    assert not (tmp_path / "run").exists()
