"""COCOeval's detections per image (max_dets): an image with more instances than COCO's 100 is
scored in full only when it is raised, and the table says so."""
from __future__ import annotations

import pytest
import torch
from pycocotools.coco import COCO

from blendmask.evaluation import COCOEvaluator, format_results_table
from blendmask.models.mask_ops import encode_masks_rle

N = 150  # 15 x 10 squares of 8 px in a 160 x 240 image


def _squares():
    masks = torch.zeros((N, 160, 240), dtype=torch.bool)
    boxes = []
    for i in range(N):
        y, x = 16 * (i // 15) + 4, 16 * (i % 15) + 4
        masks[i, y:y + 8, x:x + 8] = True
        boxes.append([x, y, x + 8, y + 8])
    return masks, torch.tensor(boxes, dtype=torch.float32)


@pytest.fixture(scope="module")
def ground_truth():
    masks, boxes = _squares()
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "height": 160, "width": 240, "file_name": "many.png"}],
        "categories": [{"id": 1, "name": "square"}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 64.0,
                         "bbox": [float(b[0]), float(b[1]), 8.0, 8.0], "segmentation": rle}
                        for i, (b, rle) in enumerate(zip(boxes.tolist(), encode_masks_rle(masks)))],
    }
    coco.createIndex()
    return coco, masks, boxes


def _score(ground_truth, max_dets):
    coco, masks, boxes = ground_truth
    evaluator = COCOEvaluator(coco, [1], max_dets=max_dets)
    evaluator.process([1], [{"boxes": boxes, "labels": torch.zeros(N, dtype=torch.int64),
                             "scores": torch.linspace(0.99, 0.5, N), "masks_rle": encode_masks_rle(masks)}])
    return evaluator.evaluate()


def test_more_instances_than_100_need_max_dets_raised(ground_truth):
    capped = _score(ground_truth, 100)
    full = _score(ground_truth, 300)
    assert full["segm"]["AP"] == pytest.approx(1.0) and full["bbox"]["AP"] == pytest.approx(1.0)
    assert capped["segm"]["AP"] < 0.7  # at most 100 of 150 found
    assert "maxDets 300" in format_results_table(full, max_dets=300)
    assert "maxDets" not in format_results_table(full)


def test_bad_max_dets_is_refused(ground_truth):
    with pytest.raises(ValueError, match="max_dets must be an integer >= 10"):
        COCOEvaluator(ground_truth[0], [1], max_dets=5)
