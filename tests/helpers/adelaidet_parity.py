"""Our model against the AdelaiDet fixtures (``tests/fixtures/adelaidet``): what the parity test and
the float32 spread harness (``tests/fixtures/adelaidet/measure_float32_spread.py``) share.

The comparisons return the largest difference of each quantity, in the unit of its tolerance:

- ``boxes``: pixels, our final boxes (clipped) against AdelaiDet's ``detector_postprocess`` output;
- ``scores``: absolute, the same detections;
- ``mask_logits``: the blender's R x R logits with AdelaiDet's rois, relative to their largest value;
- ``mask_probabilities``: our eval masks where we blended with AdelaiDet's box, relative likewise;
- ``stages``: the first channels of every bottom-up output and FPN level, relative to their largest value;
- ``losses``: the five train-mode losses, relative.

What must hold exactly (the classes in AdelaiDet's order, the counts, which detections may follow
AdelaiDet's list) is asserted inside; rounding is only ever a number returned.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from blendmask.config import MAX_INPUT_SIDE, get_config
from blendmask.convert import convert_state_dict, match_state_dict
from blendmask.models import build_model
from tests.fixtures.adelaidet import synthetic
from tests.helpers.paths import FIXTURES

ADELAIDET = FIXTURES / "adelaidet"
SPREAD_FILE = ADELAIDET / "float32_spread.json"

#: recorded AdelaiDet config -> our preset of the same AdelaiDet config
PRESETS = {
    "R_50_3x": "R_50_3x",
    "RT_R_50_4x_syncbn_shtw": "RT_R_50_4x_syncbn_shtw",
    "550_R_50_3x": "550_R_50_3x",
    "R_101_dcni3_5x": "R_101_dcni3_5x",
    "DLA_34_syncbn_4x": "DLA_34_syncbn_4x",
    "550_R_50_dcni3_5x": "550_R_50_dcni3_5x",
    "RT_R_50_4x-BN-head": "RT_R_50_4x-BN-head",
}
RECORDED = [name for name in PRESETS if (ADELAIDET / f"{name}.pt").exists()]

#: float32 sums depend on the thread count (on both sides): the fixtures were recorded with 2 threads,
#: so ours runs with 2 too
RECORDING_THREADS = 2

QUANTITIES = ("boxes", "scores", "mask_logits", "mask_probabilities", "stages", "losses")


@dataclass(frozen=True)
class Tolerances:
    """Largest allowed difference per quantity (units as in the module docstring) and ``ties``: AdelaiDet
    scores at most this far apart are ordered by float rounding, not by the model."""

    boxes: float
    scores: float
    mask_logits: float
    mask_probabilities: float
    stages: float
    losses: float
    ties: float


def load_parity(name: str):
    """(record, our model in eval mode with the converted weights, input images as float32 (3, H, W) tensors)."""
    record = torch.load(ADELAIDET / f"{name}.pt", weights_only=True)
    assert record["adelaidet_config"] == name
    sizes = [tuple(s) for s in record["image_sizes"]]
    short = {min(s) for s in sizes}
    assert len(short) == 1, "the fixture's images share their short side, so that no resize is involved"
    overrides = {"input.min_size_test": short.pop(), "input.max_size_test": MAX_INPUT_SIDE,
                 "input.min_size_train_sampling": "choice", "input.min_size_train": (min(sizes[0]),),
                 "input.max_size_train": MAX_INPUT_SIDE}

    weights = synthetic.generate_weights({k: tuple(s) for k, s in record["keys"]}, record["weight_seed"])
    model = build_model(get_config(PRESETS[name], overrides))
    # blendmask convert's path (convert_checkpoint), without the files: rename, fit, strict load
    converted, report = convert_state_dict({"model": weights})
    matched, report = match_state_dict(converted, model.state_dict(), report)
    assert report.ok, report.summary()
    model.load_state_dict(matched, strict=True)
    # the fixture's MODEL.PIXEL_STD (BGR, as ours), where it records one that is not the preset's
    model.transform.pixel_std.copy_(torch.tensor(record.get("pixel_std", model.transform.pixel_std.flatten().tolist())).view(3, 1, 1))
    images = [torch.from_numpy(im).permute(2, 0, 1).float() / 255.0
              for im in synthetic.generate_images(sizes, record["input_seed"])]
    return record, model.eval(), images


def run_eval(record, model, images):
    """(our ``detect`` output, our backbone's stages as recorded: first channels of each output).
    Runs in the model's dtype (the images are cast to it)."""
    stages = {}

    def capture(module, args, output):
        for name, value in output.items():
            if name in record["stages"]:
                stages[name] = value[:, : record["stages"][name].shape[1]]

    dtype = next(model.parameters()).dtype
    hooks = [m.register_forward_hook(capture) for m in (model.backbone.bottom_up, model.backbone)]
    try:
        with torch.no_grad():
            batch, _ = model.transform([im.to(dtype) for im in images])
            assert batch.image_sizes == [tuple(s) for s in record["image_sizes"]], "no resize"
            return model.detect(batch.tensors, batch.image_sizes), stages
    finally:
        for hook in hooks:
            hook.remove()


def clip(boxes: torch.Tensor, size) -> torch.Tensor:
    h, w = size
    return torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                        boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)


def nonempty(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|actual - expected| / max|expected|``."""
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def align_near_ties(scores, labels, boxes, final, ties: float) -> torch.Tensor:
    """Index into our first n detections (n: AdelaiDet's count) that puts them in AdelaiDet's order.

    Where AdelaiDet's scores differ by at most ``ties``, their order is float rounding (it changes with
    the thread count and the CPU's kernels, on both sides), not the model's: within such a run our
    detections are matched to AdelaiDet's by class, then nearest box. Elsewhere the index is the
    identity, so any other difference in order still fails."""
    n = final["scores"].shape[0]
    order = torch.arange(n)
    start = 0
    while start < n:
        end = start + 1
        while end < n and float(final["scores"][end - 1] - final["scores"][end]) <= ties:
            end += 1
        free = list(range(start, end))
        for r in range(start, end):
            cost = [float(labels[j] != final["classes"][r]) * 1e9 + float((boxes[j] - final["boxes"][r]).abs().max())
                    for j in free]
            order[r] = free.pop(min(range(len(free)), key=cost.__getitem__))
        start = end
    return order


def detection_errors(record, detections, top_k: int, tolerances: Tolerances) -> dict[str, float]:
    """``boxes`` and ``scores`` of our detections against AdelaiDet's final list, in AdelaiDet's order.

    Asserted here: the classes are AdelaiDet's in its order (up to ``tolerances.ties``), every box is
    AdelaiDet's clipped or unclipped one (within ``tolerances.boxes``), and what follows AdelaiDet's
    list is only what it cut at its top-k before dropping empty boxes, scored no higher."""
    errors = {"boxes": 0.0, "scores": 0.0}
    for i, (ours, image, size) in enumerate(zip(detections, record["images"], record["image_sizes"])):
        final, proposals = image["final"], image["proposals"]
        n = final["boxes"].shape[0]
        raw = ours["boxes"].float()  # clipped to the image, or (blending with the unclipped box) not yet clipped
        clipped, scores, labels = clip(raw, size), ours["scores"].float(), ours["labels"]
        keep = nonempty(clipped)  # ours may still keep empty boxes (then they must be AdelaiDet's)
        if not keep.all():
            assert raw.shape[0] == proposals["boxes"].shape[0], f"image {i}: detection count"
        raw, clipped, scores, labels = raw[keep], clipped[keep], scores[keep], labels[keep]
        assert clipped.shape[0] >= n, f"image {i}: {clipped.shape[0]} non-empty detections, AdelaiDet has {n}"
        head = align_near_ties(scores, labels, clipped, final, tolerances.ties)
        raw, clipped = torch.cat([raw[head], raw[n:]]), torch.cat([clipped[head], clipped[n:]])
        scores, labels = torch.cat([scores[head], scores[n:]]), torch.cat([labels[head], labels[n:]])
        assert torch.equal(labels[:n], final["classes"]), f"image {i}: classes differ in order"
        if n:
            errors["scores"] = max(errors["scores"], (scores[:n] - final["scores"]).abs().max().item())
            errors["boxes"] = max(errors["boxes"], (clipped[:n] - final["boxes"]).abs().max().item())
        unclipped = proposals["boxes"][nonempty(clip(proposals["boxes"], size))]
        as_unclipped = ((raw[:n] - unclipped).abs() <= tolerances.boxes).all(1)
        as_clipped = ((raw[:n] - final["boxes"]).abs() <= tolerances.boxes).all(1)
        assert (as_unclipped | as_clipped).all(), f"image {i}: boxes neither AdelaiDet's clipped nor unclipped ones"
        # beyond AdelaiDet's list: only detections it cut at its top-k before dropping empties
        dropped = proposals["boxes"].shape[0] - n
        extra = clipped.shape[0] - n
        assert extra <= dropped and clipped.shape[0] <= top_k, f"image {i}: {extra} detections beyond AdelaiDet's"
        if extra and n:
            assert scores[n:].max() <= final["scores"][-1] + tolerances.scores
    return errors


def _our_index_of_proposals(ours, proposals, size):
    """Index in our detections of each of AdelaiDet's blender detections (-1: an empty box)."""
    keep = nonempty(clip(proposals["boxes"], size))
    ours_keep = nonempty(clip(ours["boxes"], size))
    ours_idx = torch.nonzero(ours_keep).flatten()
    index = torch.full((keep.shape[0],), -1, dtype=torch.int64)
    index[keep] = ours_idx[: int(keep.sum())]
    if not ours_keep.all():  # ours kept the empty boxes too: one to one
        index = torch.arange(keep.shape[0])
    return index


def mask_errors(record, model, detections, tolerances: Tolerances) -> dict[str, float]:
    """``mask_logits``: the blender's R x R logits, our bases and attentions cropped with AdelaiDet's
    unclipped boxes; ``mask_probabilities``: our eval masks where we blend with AdelaiDet's box: inside
    the image always, at the border too once we blend with the unclipped box (the boxes ``detect``
    returns are those of the blend). Both in the model's dtype, against AdelaiDet's logits."""
    errors = {"mask_logits": 0.0, "mask_probabilities": 0.0}
    bases = torch.stack([d["bases"] for d in detections])
    for i, (ours, image, size) in enumerate(zip(detections, record["images"], record["image_sizes"])):
        expected = image["mask_logits"]
        m = expected.shape[0]
        assert m > 0
        index = _our_index_of_proposals(ours, image["proposals"], size)[:m]
        assert (index >= 0).all(), "the recorded mask logits are of non-empty boxes"
        rois = torch.cat([torch.full((m, 1), float(i)), image["proposals"]["boxes"][:m]], dim=1).to(bases.dtype)
        with torch.no_grad():
            logits = model.blend_masks(bases, ours["attns"][index].flatten(1), rois)
        errors["mask_logits"] = max(errors["mask_logits"], relative_error(logits, expected))
        same_box = ((ours["boxes"][index].float() - image["proposals"]["boxes"][:m]).abs() <= tolerances.boxes).all(1)
        inside = (clip(image["proposals"]["boxes"][:m], size) == image["proposals"]["boxes"][:m]).all(1)
        assert same_box[inside].all() and inside.any(), f"image {i}: not blended with AdelaiDet's boxes"
        errors["mask_probabilities"] = max(errors["mask_probabilities"], relative_error(
            ours["masks"][index[same_box]], expected[same_box].sigmoid()))
    return errors


def stage_errors(record, stages) -> dict[str, float]:
    assert set(stages) == set(record["stages"])
    return {"stages": max(relative_error(stages[name], expected) for name, expected in record["stages"].items())}


def loss_errors(record, model, images) -> dict[str, float]:
    """The five train-mode losses on the fixture's fixed targets (the model's BN statistics restored)."""
    dtype = next(model.parameters()).dtype
    targets = [{"boxes": torch.from_numpy(t["boxes"]).to(dtype), "labels": torch.from_numpy(t["labels"]),
                "masks": torch.from_numpy(t["masks"])}
               for t in synthetic.generate_targets([tuple(s) for s in record["image_sizes"]],
                                                   model.num_classes, record["input_seed"])]
    buffers = {k: v.clone() for k, v in model.named_buffers()}  # training updates the BN statistics
    model.train()
    try:
        losses = model([im.to(dtype) for im in images], targets)
    finally:
        model.eval()
        model.load_state_dict(buffers, strict=False)
    assert set(losses) == set(record["losses"])
    return {"losses": max(abs(float(losses[k].detach()) - expected) / abs(expected)
                          for k, expected in record["losses"].items())}


def measured_spread() -> dict[str, dict[str, float]]:
    """Per config and quantity, the largest float32 difference from the fixture over the measured runs
    (``float32_spread.json``, written by ``measure_float32_spread.py``)."""
    return json.loads(SPREAD_FILE.read_text())["spread"]
