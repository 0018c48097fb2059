"""Overlays stay readable on small images: labels beside the objects or in a legend, never over them."""
from __future__ import annotations

import numpy as np
import torch

from blendmask.visualize import draw_instances

SIDE = 128


def _thirty_small_objects():
    """30 discs of radius 4-7 px on a 6 x 5 grid of a 128-px image."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    masks, boxes = [], []
    rng = np.random.default_rng(0)
    for k in range(30):
        cy, cx, r = 14 + 20 * (k // 6), 12 + 21 * (k % 6), int(rng.integers(4, 8))
        masks.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
        boxes.append([cx - r, cy - r, cx + r + 1, cy + r + 1])
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([k % 3 for k in range(30)]),
            "scores": torch.linspace(0.95, 0.5, 30), "masks": torch.from_numpy(np.stack(masks))[:, None].float()}


def test_labels_cover_at_most_a_tenth_of_any_small_object():
    image = torch.full((3, SIDE, SIDE), 0.4)
    result = _thirty_small_objects()
    names = ["nucleus", "mitotic cell", "debris"]
    with_labels = np.asarray(draw_instances(image, result, names, score_threshold=0.0)).astype(int)
    without = np.asarray(draw_instances(image, result, names, score_threshold=0.0, labels=False)).astype(int)
    assert with_labels.shape[0] >= SIDE and with_labels.shape[1] >= SIDE
    changed = (with_labels[:SIDE, :SIDE] != without).any(axis=2)  # pixels a label was drawn over
    masks = result["masks"][:, 0].numpy() > 0.5
    covered = [(changed & m).sum() / m.sum() for m in masks]
    assert max(covered) <= 0.10, f"a label covers {max(covered):.0%} of an object"
    if with_labels.shape[1] > SIDE:  # the instances without room beside them are in the legend
        assert (with_labels[:, SIDE:] != 255).any()


def test_a_large_image_with_room_gets_its_labels_beside_the_objects():
    image = torch.full((3, 400, 600), 0.4)
    masks = torch.zeros(2, 1, 400, 600)
    masks[0, 0, 100:200, 100:200] = 1
    masks[1, 0, 250:350, 350:500] = 1
    result = {"boxes": torch.tensor([[100.0, 100, 200, 200], [350.0, 250, 500, 350]]), "labels": torch.tensor([0, 1]),
              "scores": torch.tensor([0.9, 0.8]), "masks": masks}
    picture = draw_instances(image, result, ["a", "b"])
    assert picture.size == (600, 400)  # no legend needed
    with_labels = np.asarray(picture).astype(int)
    without = np.asarray(draw_instances(image, result, ["a", "b"], labels=False)).astype(int)
    changed = (with_labels != without).any(axis=2)
    assert changed[80:100, 100:200].any() and not (changed & (masks[:, 0].sum(0).numpy() > 0)).any()


def test_masks_given_as_crops_draw_as_whole_masks():
    image = torch.full((3, SIDE, SIDE), 0.4)
    result = _thirty_small_objects()
    masks = result["masks"][:, 0].numpy() > 0.5
    crops = []
    for m in masks:
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        crops.append((int(cols[0]), int(rows[0]), m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]))
    as_crops = {k: v for k, v in result.items() if k != "masks"}
    as_crops["mask_crops"] = crops
    names = ["a", "b", "c"]
    assert np.array_equal(np.asarray(draw_instances(image, result, names)), np.asarray(draw_instances(image, as_crops, names)))


def test_the_legend_keeps_the_pictures_height():
    image = torch.full((3, 40, 40), 0.4)
    masks = torch.zeros(50, 1, 40, 40)
    masks[:, 0, 5:35, 5:35] = 1
    result = {"boxes": torch.tensor([[0.0, 0, 40, 40]] * 50), "labels": torch.zeros(50, dtype=torch.int64),
              "scores": torch.linspace(0.9, 0.4, 50), "masks": masks}
    picture = draw_instances(image, result, ["cell"])
    assert picture.size[1] == 40 and picture.size[0] > 40
