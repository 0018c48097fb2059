"""The faster-coco-eval backend gives pycocotools' metrics (to 1e-4), and each evaluation can keep its
own results file."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from blendmask.data import CocoInstanceDataset
from blendmask.evaluation.coco_eval import COCOEvaluator

from tests.helpers.coco_files import box_of, rle_of, write_coco


def _scene(tmp_path, n_images=12, seed=0):
    rng = np.random.default_rng(seed)
    images, anns, outputs = [], [], {}
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"im{i}.png", "width": 64, "height": 48})
        boxes, labels, scores, masks = [], [], [], []
        for _ in range(int(rng.integers(1, 5))):
            y, x = int(rng.integers(0, 30)), int(rng.integers(0, 40))
            h, w = int(rng.integers(4, 18)), int(rng.integers(4, 24))
            mask = np.zeros((48, 64), np.uint8)
            mask[y:y + h, x:x + w] = 1
            category = int(rng.choice([3, 7]))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": category, "segmentation": rle_of(mask),
                         "bbox": box_of(mask), "iscrowd": int(rng.random() < 0.1)})
            # a noisy detection of it, sometimes of the wrong class, plus a spurious one
            dy, dx = (int(v) for v in rng.integers(-1, 2, 2))
            det = np.roll(np.roll(mask, dy, 0), dx, 1)
            boxes.append(box_of(det))
            labels.append(0 if category == 3 else 1) if rng.random() < 0.85 else labels.append(int(rng.integers(2)))
            scores.append(float(rng.random()))
            masks.append(det)
        outputs[i] = {"boxes": torch.tensor([[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in boxes]),
                      "labels": torch.tensor(labels), "scores": torch.tensor(scores),
                      "masks": torch.from_numpy(np.stack(masks)).float()[:, None]}
    path = write_coco(tmp_path, images, anns)
    return CocoInstanceDataset(path, tmp_path / "images"), outputs


def _metrics(dataset, outputs, **kwargs):
    evaluator = COCOEvaluator(dataset, **kwargs)
    for image_id, output in outputs.items():
        evaluator.process([image_id], [output])
    return evaluator.evaluate()


def test_faster_coco_eval_equals_pycocotools(tmp_path):
    pytest.importorskip("faster_coco_eval")
    dataset, outputs = _scene(tmp_path)
    reference = _metrics(dataset, outputs)
    faster = _metrics(dataset, outputs, backend="faster-coco-eval")
    used = COCOEvaluator(dataset, backend="faster-coco-eval")._cocoeval([], "bbox")
    assert type(used).__module__.startswith("faster_coco_eval")
    assert reference["segm"]["AP"] > 0.1  # a non-trivial score to compare
    for task in ("bbox", "segm"):
        assert set(faster[task]) == set(reference[task])
        for name, value in reference[task].items():
            other = faster[task][name]
            assert (math.isnan(value) and math.isnan(other)) or abs(value - other) <= 1e-4, (task, name, value, other)


def test_unknown_backend_and_bad_results_name(tmp_path):
    dataset, _ = _scene(tmp_path, n_images=2)
    with pytest.raises(ValueError, match="backend"):
        COCOEvaluator(dataset, backend="detectron2")
    with pytest.raises(ValueError, match="results_name"):
        COCOEvaluator(dataset, results_name="../x.json")


def test_each_evaluation_keeps_its_results_file(tmp_path):
    dataset, outputs = _scene(tmp_path, n_images=3)
    for name in ("results_iter_0000100.json", "results_iter_0000200.json"):
        _metrics(dataset, outputs, output_dir=tmp_path / "eval", results_name=name)
    written = sorted(p.name for p in (tmp_path / "eval").iterdir())
    assert written == ["results_iter_0000100.json", "results_iter_0000200.json"]
    assert json.loads((tmp_path / "eval" / written[0]).read_text())
