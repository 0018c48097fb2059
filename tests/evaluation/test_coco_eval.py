"""COCO evaluation: ground truth scores AP 1, perturbed copies score lower, edge cases."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from blendmask.data import CocoInstanceDataset, RandomHorizontalFlip, build_test_loader, make_shapes, resolve_split
from blendmask.evaluation import MAIN_METRICS, RESULTS_FILE, COCOEvaluator, evaluate_model, format_results_table

from tests.helpers.coco_files import box_of, rle_of, write_coco


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    root = make_shapes(tmp_path_factory.mktemp("shapes"), train=0, val=6, size=96, seed=1)
    return CocoInstanceDataset(*resolve_split(root, "val"))


def _gt_output(target, *, shift=0, scores=None):
    """The ground truth of one image in the model's eval format, optionally shifted right."""
    n = len(target["labels"])
    boxes = target["boxes"].clone()
    boxes[:, 0::2] = (boxes[:, 0::2] + shift).clamp(max=target["masks"].shape[-1])
    masks = torch.roll(target["masks"], shifts=shift, dims=-1).float()[:, None]
    return {
        "boxes": boxes,
        "labels": target["labels"].clone(),
        "scores": torch.linspace(0.9, 0.5, n) if scores is None else scores,
        "masks": masks,
    }


def _evaluate(dataset, make_output, **kwargs):
    evaluator = COCOEvaluator(dataset, **kwargs)
    for i in range(len(dataset)):
        _, target = dataset[i]
        evaluator.process([target["image_id"]], [make_output(target)])
    return evaluator.evaluate()


def test_ground_truth_scores_one_and_perturbations_score_lower(val_set):
    perfect = _evaluate(val_set, _gt_output)
    for task in ("bbox", "segm"):
        assert set(MAIN_METRICS) <= set(perfect[task])
        for key in ("AP", "AP50", "AP75"):
            assert perfect[task][key] == pytest.approx(1.0)
        for name in val_set.class_names:
            assert perfect[task][f"AP-{name}"] == pytest.approx(1.0)
        assert math.isnan(perfect[task]["APl"])  # no large objects in 96 px images: undefined, not 0

    shifted = _evaluate(val_set, lambda t: _gt_output(t, shift=4))
    for task in ("bbox", "segm"):
        assert 0.0 < shifted[task]["AP"] < 0.9
        assert shifted[task]["AP75"] < perfect[task]["AP75"]

    def wrong_labels(target):
        out = _gt_output(target)
        out["labels"] = (out["labels"] + 1) % val_set.num_classes
        return out

    assert _evaluate(val_set, wrong_labels)["segm"]["AP"] == pytest.approx(0.0)

    def masks_only_wrong(target):  # right boxes, empty masks: bbox stays perfect, segm collapses
        out = _gt_output(target)
        out["masks"] = torch.zeros_like(out["masks"])
        return out

    mixed = _evaluate(val_set, masks_only_wrong)
    assert mixed["bbox"]["AP"] == pytest.approx(1.0) and mixed["segm"]["AP"] == pytest.approx(0.0)


def test_zero_predictions_score_zero_without_crashing(val_set, tmp_path):
    def nothing(target):
        h, w = target["masks"].shape[-2:]
        return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                "scores": torch.zeros(0), "masks": torch.zeros(0, 1, h, w)}

    metrics = _evaluate(val_set, nothing, output_dir=tmp_path)
    assert metrics["bbox"]["AP"] == 0.0 and metrics["segm"]["AP"] == 0.0
    assert json.loads((tmp_path / RESULTS_FILE).read_text()) == []
    assert "0.000" in format_results_table(metrics)


def test_results_json_maps_labels_to_category_ids(tmp_path):
    h, w = 16, 20
    m1, m2 = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    m1[2:8, 3:9], m2[9:15, 10:18] = 1, 1
    crowd = np.zeros((h, w), np.uint8)
    crowd[0:2, 0:20] = 1
    anns = [
        {"id": 1, "image_id": 5, "category_id": 3, "segmentation": rle_of(m1), "bbox": box_of(m1), "area": 36.0, "iscrowd": 0},
        {"id": 2, "image_id": 5, "category_id": 7, "segmentation": rle_of(m2), "bbox": box_of(m2), "area": 48.0, "iscrowd": 0},
        {"id": 3, "image_id": 5, "category_id": 7, "segmentation": rle_of(crowd, compressed=False),
         "bbox": box_of(crowd), "area": 40.0, "iscrowd": 1},
    ]
    path = write_coco(tmp_path, [{"id": 5, "file_name": "a.png", "height": h, "width": w}], anns)
    ds = CocoInstanceDataset(path, tmp_path / "images")
    out_dir = tmp_path / "out"
    _, target = ds[0]
    evaluator = COCOEvaluator(ds.coco, ds.category_ids, output_dir=out_dir)
    evaluator.process([5], [_gt_output(target)])
    metrics = evaluator.evaluate()
    assert metrics["segm"]["AP"] == pytest.approx(1.0) and metrics["bbox"]["AP"] == pytest.approx(1.0)
    results = json.loads((out_dir / RESULTS_FILE).read_text())
    assert [r["category_id"] for r in results] == [3, 7]
    assert results[0]["bbox"] == [3.0, 2.0, 6.0, 6.0] and results[0]["image_id"] == 5
    table = format_results_table(metrics)
    assert "cat" in table and "dog" in table and "1.000" in table and "segm" in table


def test_bad_inputs_are_rejected(val_set):
    _, target = val_set[0]
    evaluator = COCOEvaluator(val_set)
    with pytest.raises(RuntimeError, match="no images"):
        evaluator.evaluate()
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluator.process([12345], [_gt_output(target)])
    bad = _gt_output(target)
    bad["masks"] = bad["masks"][..., :-1]
    with pytest.raises(ValueError, match="masks must be"):
        evaluator.process([target["image_id"]], [bad])
    bad = _gt_output(target)
    bad["labels"][0] = 9
    with pytest.raises(ValueError, match="labels must be in"):
        evaluator.process([target["image_id"]], [bad])
    with pytest.raises(ValueError, match="category_ids is required"):
        COCOEvaluator(val_set.coco)
    with pytest.raises(ValueError, match="not categories"):
        COCOEvaluator(val_set.coco, [1, 99])
    with pytest.raises(TypeError, match="pycocotools COCO"):
        COCOEvaluator(object(), [1])


class _Oracle(torch.nn.Module):
    """Returns the ground truth of the data set's images in order (checks it gets eval mode)."""

    def __init__(self, dataset):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.queue = [_gt_output(dataset[i][1]) for i in range(len(dataset))]

    def forward(self, images):
        assert not self.training and not torch.is_grad_enabled()
        return [self.queue.pop(0) for _ in images]


def test_evaluate_model_runs_the_model_and_restores_train_mode(val_set, tmp_path):
    model = _Oracle(val_set).train()
    metrics = evaluate_model(model, val_set, batch_size=4, output_dir=tmp_path, progress=False)
    assert model.training and not model.queue
    assert metrics["segm"]["AP"] == pytest.approx(1.0) and metrics["bbox"]["AP50"] == pytest.approx(1.0)
    assert (tmp_path / RESULTS_FILE).is_file()
    flipping = CocoInstanceDataset(val_set.ann_file, val_set.image_dir, transforms=RandomHorizontalFlip(0.5))
    with pytest.raises(ValueError, match="transforms=None"):
        evaluate_model(model, flipping, progress=False)


def _distributed_worker(rank, world_size, init_file, ann_file, image_dir, out_dir, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        dataset = CocoInstanceDataset(ann_file, image_dir)
        evaluator = COCOEvaluator(dataset, output_dir=out_dir, distributed=True)
        seen = []
        for _, targets in build_test_loader(dataset, batch_size=2, distributed=True):
            evaluator.process([t["image_id"] for t in targets], [_gt_output(t) for t in targets])
            seen += [t["image_id"] for t in targets]
        queue.put((rank, seen, evaluator.evaluate()["segm"]["AP"]))
    finally:
        dist.destroy_process_group()


def test_two_ranks_gather_their_shards(val_set, tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(
        _distributed_worker,
        args=(2, str(tmp_path / "pg"), val_set.ann_file, val_set.image_dir, str(tmp_path / "out"), queue),
        nprocs=2,
        start_method="spawn",
    )
    results = sorted(queue.get(timeout=60) for _ in range(2))
    (_, seen0, ap0), (_, seen1, ap1) = results
    assert sorted(seen0 + seen1) == sorted(val_set.image_ids) and not set(seen0) & set(seen1)
    assert ap0 == pytest.approx(1.0) and ap1 == pytest.approx(1.0)
    # rank 0 wrote the gathered detections of both shards
    written = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert len(written) == len(val_set.coco.getAnnIds())
    assert {r["image_id"] for r in written} == set(seen0 + seen1)


# --------------------------------------------------------------------------- RLE outputs, bounded memory

def _as_rle_output(output):
    from blendmask.models.mask_ops import encode_masks_rle

    out = {k: v for k, v in output.items() if k != "masks"}
    out["masks_rle"] = encode_masks_rle(output["masks"][:, 0])
    return out


def test_rle_outputs_score_as_the_masks_they_encode(val_set, tmp_path):
    as_masks = _evaluate(val_set, lambda t: _gt_output(t, shift=3), output_dir=tmp_path / "masks")
    as_rles = _evaluate(val_set, lambda t: _as_rle_output(_gt_output(t, shift=3)), output_dir=tmp_path / "rles")
    assert json.dumps(as_masks) == json.dumps(as_rles)
    assert (tmp_path / "masks" / RESULTS_FILE).read_text() == (tmp_path / "rles" / RESULTS_FILE).read_text()
    _, target = val_set[0]
    evaluator = COCOEvaluator(val_set)
    bad = _as_rle_output(_gt_output(target))
    bad["masks_rle"] = bad["masks_rle"][1:]
    with pytest.raises(ValueError, match="masks_rle must be"):
        evaluator.process([target["image_id"]], [bad])
    bad = _as_rle_output(_gt_output(target))
    bad["masks_rle"][0] = {"size": [3, 4], "counts": "0"}
    with pytest.raises(ValueError, match="record 0"):
        evaluator.process([target["image_id"]], [bad])
    bad = {k: v for k, v in _gt_output(target).items() if k != "masks"}
    with pytest.raises(ValueError, match="lacks"):
        evaluator.process([target["image_id"]], [bad])


class _RleOracle(_Oracle):
    """An oracle with BlendMask's ``mask_format`` attribute: answers in the format it is set to."""

    mask_format = "probs"

    def forward(self, images):
        assert self.mask_format == "rle", "evaluate_model must ask for RLE masks"
        return [_as_rle_output(out) for out in super().forward(images)]


def test_evaluate_model_asks_models_for_rle_masks_and_restores_the_format(val_set, tmp_path):
    model = _RleOracle(val_set)
    metrics = evaluate_model(model, val_set, batch_size=2, progress=False)
    assert model.mask_format == "probs" and not model.queue
    assert metrics["segm"]["AP"] == pytest.approx(1.0)


_PEAK_SCRIPT = r"""
import resource, sys
import torch
from pycocotools.coco import COCO
from blendmask.evaluation import COCOEvaluator
from blendmask.models.blendmask import postprocess_detections

n, side = int(sys.argv[1]), 2000
gt = COCO()
gt.dataset = {"images": [{"id": 1, "height": side, "width": side}], "categories": [{"id": 1, "name": "a"}],
              "annotations": []}
gt.createIndex()
g = torch.Generator().manual_seed(0)
boxes = torch.rand(n, 4, generator=g) * 40 + torch.tensor([0.0, 0.0, 460.0, 460.0])  # nearly whole-image boxes
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = postprocess_detections(boxes, torch.rand(n, generator=g), torch.zeros(n, dtype=torch.int64),
                             torch.rand(n, 56, 56, generator=g), image_size=(500, 500), original_size=(side, side),
                             mask_format="rle")
COCOEvaluator(gt, [1]).process([1], [out])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_rle_postprocess_and_evaluation_memory_does_not_grow_with_detections():
    """Peak RSS growth of the RLE path for 5 and 50 nearly whole-image masks of 2000 x 2000: the
    float masks alone would be 16 MB each (720 MB more for 50 than for 5)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    growth = {}
    for n in (5, 50):
        proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(n)], capture_output=True, text=True,
                              env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        growth[n] = int(proc.stdout.split()[-1])  # MB
    assert growth[50] - growth[5] < 100, growth
    assert growth[50] < 300, growth  # one chunk (64 MB of floats) plus temporaries, not 50 x 16 MB
