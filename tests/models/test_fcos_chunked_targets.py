"""FCOS target assignment in chunks of boxes: bounded memory for thousands of instances, and the
same result bit for bit as one pass over all boxes."""
import pytest
import torch

from blendmask.models.fcos.targets import (
    INF,
    _center_region_mask,
    assign_targets_single,
    compute_locations,
    level_size_ranges,
)

STRIDES = (8, 16, 32, 64, 128)
SIZES = (64, 128, 256, 512)


def _locations(height, width):
    per_level = [compute_locations((height + s - 1) // s, (width + s - 1) // s, s) for s in STRIDES]
    strides = torch.cat([torch.full((len(p),), float(s)) for p, s in zip(per_level, STRIDES)])
    ranges = torch.cat([torch.tensor([r]).expand(len(p), 2) for p, r in zip(per_level, level_size_ranges(SIZES, 5))])
    return torch.cat(per_level), strides, ranges


def _one_pass(locations, strides, ranges, boxes, labels, num_classes):
    """The assignment as one (P, G) pass (the definition the chunks must reproduce)."""
    xs, ys = locations[:, 0:1], locations[:, 1:2]
    reg = torch.stack([xs - boxes[None, :, 0], ys - boxes[None, :, 1], boxes[None, :, 2] - xs, boxes[None, :, 3] - ys], 2)
    inside = _center_region_mask(boxes, locations, strides, 1.5)
    max_reg = reg.max(dim=2).values
    in_range = (max_reg >= ranges[:, 0:1]) & (max_reg <= ranges[:, 1:2])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    loc_to_area = area[None].expand(len(locations), -1).clone()
    loc_to_area[~(inside & in_range)] = INF
    min_area, gt_inds = loc_to_area.min(dim=1)
    background = min_area == INF
    target_labels = labels[gt_inds].clone()
    target_labels[background] = num_classes
    gt_inds = gt_inds.clone()
    gt_inds[background] = -1
    return target_labels, reg[torch.arange(len(locations)), gt_inds.clamp(min=0)], gt_inds


@pytest.mark.parametrize("num_boxes, max_pairs", [(40, 1 << 22), (40, 5000), (300, 20000), (300, 1)])
def test_chunks_give_the_one_pass_result_bit_for_bit(num_boxes, max_pairs):
    torch.manual_seed(num_boxes)
    locations, strides, ranges = _locations(256, 320)
    xy = torch.rand(num_boxes, 2) * torch.tensor([300.0, 240.0])
    wh = torch.rand(num_boxes, 2) * 120 + 2
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[1::7] = boxes[0::7][: len(boxes[1::7])]  # duplicated boxes: ties of equal area
    labels = torch.randint(0, 3, (num_boxes,))
    got = assign_targets_single(locations, strides, ranges, boxes, labels, num_classes=3, max_pairs=max_pairs)
    expected = _one_pass(locations, strides, ranges, boxes, labels, 3)
    assert torch.equal(got.labels, expected[0]) and torch.equal(got.gt_inds, expected[2])
    assert torch.equal(got.reg_targets, expected[1])


def test_thousands_of_instances_hold_a_bounded_number_of_pairs(monkeypatch):
    import blendmask.models.fcos.targets as targets

    locations, strides, ranges = _locations(128, 128)
    largest = []
    real = targets._smallest_box_per_location

    def recording(locations, strides, ranges, boxes, **kwargs):
        largest.append(len(locations) * len(boxes))
        return real(locations, strides, ranges, boxes, **kwargs)

    monkeypatch.setattr(targets, "_smallest_box_per_location", recording)
    xy = torch.rand(5000, 2) * 120
    boxes = torch.cat([xy, xy + 4], 1)
    result = assign_targets_single(locations, strides, ranges, boxes, torch.zeros(5000, dtype=torch.int64),
                                   num_classes=1, max_pairs=len(locations) * 100)
    assert max(largest) <= len(locations) * 100 and len(largest) == 50
    assert (result.gt_inds >= 0).any()
