"""Mask geometry: crop-and-resize of GT masks to R x R targets, pasting R x R masks into images."""
import pytest
import torch

from blendmask.models.mask_ops import crop_and_resize_masks, paste_masks_in_image


def _rect_mask(h, w, x0, y0, x1, y1):
    m = torch.zeros(h, w, dtype=torch.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def test_crop_with_own_box_is_full():
    mask = _rect_mask(20, 20, 4, 5, 12, 15)
    out = crop_and_resize_masks(mask[None], torch.tensor([[4.0, 5.0, 12.0, 15.0]]), 8)
    assert out.shape == (1, 8, 8) and out.dtype == torch.float32
    assert torch.all(out == 1)


def test_crop_of_whole_image_is_block_downsample():
    mask = _rect_mask(20, 20, 4, 6, 12, 14)  # even-aligned, so 2x2 blocks are all in or all out
    out = crop_and_resize_masks(mask[None], torch.tensor([[0.0, 0.0, 20.0, 20.0]]), 10)
    assert torch.equal(out[0], mask[::2, ::2].float())


def test_crop_picks_the_right_region_and_thresholds_at_half():
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[0, :, :8] = True  # left half
    mask[1, 4:12, 4:12] = True
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 16.0, 16.0]])
    out = crop_and_resize_masks(mask, boxes, 4)
    assert torch.equal(out[0], torch.tensor([[1.0, 1, 0, 0]] * 4))
    assert torch.equal(out[1], torch.tensor([[0.0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]))
    # a box covering the right half of the left-half mask sees nothing
    out = crop_and_resize_masks(mask[:1], torch.tensor([[8.0, 0.0, 16.0, 16.0]]), 4)
    assert torch.all(out == 0)


def test_crop_empty_and_bad_shapes():
    assert crop_and_resize_masks(torch.zeros(0, 5, 5), torch.zeros(0, 4), 7).shape == (0, 7, 7)
    with pytest.raises(ValueError, match="masks"):
        crop_and_resize_masks(torch.zeros(2, 5, 5), torch.zeros(1, 4), 7)


def test_paste_at_cell_aligned_box_is_exact():
    torch.manual_seed(0)
    probs = torch.rand(1, 4, 4)
    out = paste_masks_in_image(probs, torch.tensor([[2.0, 3.0, 6.0, 7.0]]), (10, 12))
    assert out.shape == (1, 1, 10, 12)
    assert torch.allclose(out[0, 0, 3:7, 2:6], probs[0])
    outside = out.clone()
    outside[0, 0, 3:7, 2:6] = 0
    assert torch.all(outside == 0)


def test_crop_then_paste_roundtrip():
    mask = torch.zeros(1, 60, 80, dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(60), torch.arange(80), indexing="ij")
    mask[0] = (((xx - 40) / 25.0) ** 2 + ((yy - 30) / 18.0) ** 2 <= 1).to(torch.uint8)  # an ellipse
    box = torch.tensor([[15.0, 12.0, 66.0, 49.0]])
    pasted = paste_masks_in_image(crop_and_resize_masks(mask, box, 28), box, (60, 80))[:, 0] >= 0.5
    inter = (pasted & mask.bool()).sum().item()
    union = (pasted | mask.bool()).sum().item()
    assert inter / union > 0.95


def test_paste_boxes_outside_or_degenerate():
    probs = torch.ones(3, 4, 4)
    boxes = torch.tensor([[-10.0, -10.0, 4.0, 4.0], [50.0, 50.0, 60.0, 60.0], [5.0, 5.0, 5.0, 9.0]])
    out = paste_masks_in_image(probs, boxes, (8, 8))
    # only the in-image part of the first box is painted (fading at its border, as detectron2's paste)
    assert torch.all(out[0, 0, :2, :2] == 1) and out[0, 0, 4:, :].sum() == 0 and out[0, 0, :, 4:].sum() == 0
    assert out[1].sum() == 0 and out[2].sum() == 0
    assert paste_masks_in_image(torch.zeros(0, 4, 4), torch.zeros(0, 4), (5, 6)).shape == (0, 1, 5, 6)
    with pytest.raises(ValueError, match="boxes"):
        paste_masks_in_image(torch.zeros(2, 4, 4), torch.zeros(2, 5), (5, 6))


def test_rle_encoding_round_trips_the_binarised_masks():
    import json

    import numpy as np
    from pycocotools import mask as mask_utils

    from blendmask.models.mask_ops import MASK_THRESHOLD, encode_masks_rle

    torch.manual_seed(0)
    probs = torch.rand(3, 17, 23)
    probs[1, 4, 5] = MASK_THRESHOLD  # on the threshold: inside
    probs[2] = 0.0  # an empty mask
    rles = encode_masks_rle(probs)
    assert len(rles) == 3
    json.dumps(rles)  # JSON-ready: counts are str
    for rle, p in zip(rles, probs):
        assert rle["size"] == [17, 23] and isinstance(rle["counts"], str)
        decoded = mask_utils.decode(rle)
        assert np.array_equal(decoded, (p >= MASK_THRESHOLD).numpy().astype(np.uint8))
    assert mask_utils.decode(rles[1])[4, 5] == 1
    assert mask_utils.area(rles[2]) == 0
    # a bool mask encodes the same as its probabilities
    assert encode_masks_rle(probs >= MASK_THRESHOLD) == rles


def test_rle_encoding_of_no_masks_and_bad_shapes():
    from blendmask.models.mask_ops import encode_masks_rle

    assert encode_masks_rle(torch.zeros(0, 5, 6)) == []
    with pytest.raises(ValueError, match=r"\(n, H, W\)"):
        encode_masks_rle(torch.zeros(2, 1, 5, 6))
