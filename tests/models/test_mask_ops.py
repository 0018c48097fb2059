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


def test_rle_encoding_of_bool_uint8_and_strided_masks_equals_pycocotools():
    import numpy as np
    from pycocotools import mask as mask_utils

    from blendmask.models.mask_ops import encode_masks_rle

    g = torch.Generator().manual_seed(3)
    binary = torch.rand(4, 1, 19, 26, generator=g) > 0.6
    binary[2] = True  # runs that continue from column to column
    want = [rle["counts"].decode("ascii")
            for rle in mask_utils.encode(np.asfortranarray(binary[:, 0].permute(1, 2, 0).numpy().astype(np.uint8)))]
    for masks in (binary[:, 0], binary[:, 0].to(torch.uint8), binary.transpose(2, 3)[:, 0].transpose(1, 2)):
        assert [r["counts"] for r in encode_masks_rle(masks)] == want
    assert [r["counts"] for r in encode_masks_rle(binary[:, 0], 0.99)] == want
    assert all(mask_utils.area(r) == 0 for r in encode_masks_rle(binary[:, 0], 1.5))


def test_rle_encoding_of_no_masks_and_bad_shapes():
    from blendmask.models.mask_ops import encode_masks_rle

    assert encode_masks_rle(torch.zeros(0, 5, 6)) == []
    with pytest.raises(ValueError, match=r"\(n, H, W\)"):
        encode_masks_rle(torch.zeros(2, 1, 5, 6))


# --------------------------------------------------------------------------- vectorised, chunked paste

def _paste_per_instance(masks, boxes, image_size):
    """The paste as it was before it was vectorised: one grid_sample per instance over the
    pixels of its box. The reference of the chunked paste."""
    import math

    import torch.nn.functional as F

    height, width = image_size
    out = masks.new_zeros((masks.shape[0], 1, height, width))
    for i, (mask, box) in enumerate(zip(masks, boxes.tolist())):
        x0, y0, x1, y1 = box
        if not (x1 > x0 and y1 > y0):
            continue
        px0, py0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
        px1, py1 = min(int(math.ceil(x1)), width), min(int(math.ceil(y1)), height)
        if px1 <= px0 or py1 <= py0:
            continue
        xs = (torch.arange(px0, px1, dtype=masks.dtype) + 0.5 - x0) / (x1 - x0) * 2 - 1
        ys = (torch.arange(py0, py1, dtype=masks.dtype) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
        patch = F.grid_sample(mask[None, None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)
        out[i, 0, py0:py1, px0:px1] = patch[0, 0]
    return out


def _hostile_boxes(n, height, width, generator):
    """Random boxes: inside, partly outside, tiny (under a pixel), whole-image, fully outside,
    degenerate and non-finite ones."""
    centers = torch.rand(n, 2, generator=generator) * torch.tensor([width * 1.4, height * 1.4]) - torch.tensor([width * 0.2, height * 0.2])
    sizes = torch.rand(n, 2, generator=generator) * torch.tensor([width, height]) * 0.8
    sizes[: n // 4] *= 0.01  # tiny
    boxes = torch.cat([centers - sizes / 2, centers + sizes / 2], dim=1)
    boxes[-1] = torch.tensor([0.0, 0.0, width, height])
    boxes[-2] = torch.tensor([-3.0, -2.5, width + 4.0, height + 0.25])
    boxes[-3] = torch.tensor([width + 1.0, 2.0, width + 9.0, 6.0])  # outside
    boxes[-4] = torch.tensor([5.0, 5.0, 5.0, 9.0])  # empty
    boxes[-5] = torch.tensor([5.0, 9.0, 8.0, 2.0])  # inverted
    boxes[-6] = torch.tensor([float("nan"), 1.0, 4.0, 5.0])
    return boxes


@pytest.mark.parametrize("chunk_bytes", [1, 20_000, None])
@pytest.mark.parametrize("size", [(37, 53), (64, 64)])
def test_chunked_paste_equals_the_per_instance_paste(chunk_bytes, size):
    g = torch.Generator().manual_seed(size[0] * 7 + (chunk_bytes or 0))
    masks = torch.rand(40, 28, 28, generator=g)
    boxes = _hostile_boxes(40, *size, g)
    kwargs = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
    got = paste_masks_in_image(masks, boxes, size, **kwargs)
    want = _paste_per_instance(masks, boxes, size)
    assert got.shape == want.shape == (40, 1, *size)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    assert got[-6:-2].abs().sum() == 0  # non-finite, inverted, empty and outside boxes paste nothing


def test_chunked_paste_keeps_dtype_and_handles_empty_input():
    from blendmask.models.mask_ops import paste_mask_patches

    masks = torch.rand(3, 14, 14, dtype=torch.float64)
    boxes = torch.tensor([[1.0, 2.0, 9.5, 7.25], [0.0, 0.0, 3.0, 3.0], [2.0, 2.0, 12.0, 12.0]], dtype=torch.float64)
    got = paste_masks_in_image(masks, boxes, (10, 11))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _paste_per_instance(masks, boxes, (10, 11)))
    assert list(paste_mask_patches(torch.zeros(0, 4, 4), torch.zeros(0, 4), (5, 6))) == []


def test_paste_chunks_respect_the_byte_bound():
    from blendmask.models.mask_ops import paste_mask_patches

    g = torch.Generator().manual_seed(3)
    masks = torch.rand(30, 28, 28, generator=g)
    boxes = _hostile_boxes(30, 120, 90, g)
    bound = 200_000
    seen = []
    for group, extents, patches in paste_mask_patches(masks, boxes, (120, 90), chunk_bytes=bound):
        c, h, w = patches.shape
        assert c == len(group) == extents.shape[0]
        assert c == 1 or c * (h * w + 2 * 28 * (h + w)) * 4 <= bound
        assert h == int((extents[:, 3] - extents[:, 1]).max()) and w == int((extents[:, 2] - extents[:, 0]).max())
        seen += group
    assert len(seen) == len(set(seen)) and len(seen) >= 20  # every non-empty mask once
    assert len(seen) < 30  # the empty, outside and non-finite ones are skipped


@pytest.mark.parametrize("threshold", [0.5, 0.2, 0.9])
def test_paste_masks_rle_equals_encoding_the_pasted_masks(threshold):
    from blendmask.models.mask_ops import encode_masks_rle, paste_masks_rle

    g = torch.Generator().manual_seed(int(threshold * 10))
    size = (45, 61)
    masks = torch.rand(25, 28, 28, generator=g)
    masks[0] = 1.0  # a whole-image box of ones: runs that continue from column to column
    boxes = _hostile_boxes(25, *size, g)
    boxes[0] = torch.tensor([-1.0, -1.0, size[1] + 1.0, size[0] + 1.0])
    boxes[1] = torch.tensor([3.0, -5.0, 9.0, size[0] + 5.0])  # full height, a few columns
    masks[1] = 1.0
    want = encode_masks_rle(paste_masks_in_image(masks, boxes, size)[:, 0], threshold)
    for chunk_bytes in (1, 10**8):
        assert paste_masks_rle(masks, boxes, size, threshold=threshold, chunk_bytes=chunk_bytes) == want
    assert paste_masks_rle(torch.zeros(0, 4, 4), torch.zeros(0, 4), size) == []
    with pytest.raises(ValueError, match="threshold"):
        paste_masks_rle(masks, boxes, size, threshold=0.0)


@pytest.mark.parametrize("threshold", [0.5, 0.2])
def test_binary_paste_equals_thresholding_the_float_paste(threshold):
    g = torch.Generator().manual_seed(11)
    size = (45, 61)
    masks = torch.rand(25, 28, 28, generator=g)
    boxes = _hostile_boxes(25, *size, g)
    want = paste_masks_in_image(masks, boxes, size) >= threshold
    for chunk_bytes in (1, 10**8):
        got = paste_masks_in_image(masks, boxes, size, threshold=threshold, chunk_bytes=chunk_bytes)
        assert got.dtype == torch.bool and torch.equal(got, want)
    with pytest.raises(ValueError, match="threshold"):
        paste_masks_in_image(masks, boxes, size, threshold=0.0)


def test_eval_mask_format_binary_is_the_thresholded_probs():
    from blendmask.models import blendmask_mobilenet_v2_fpn

    torch.manual_seed(0)
    model = blendmask_mobilenet_v2_fpn(num_classes=3, **{"input.min_size_test": 64, "input.max_size_test": 96}).eval()
    model.proposal_generator.score_thresh = 0.0
    image = [torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(4))]
    with torch.no_grad():
        (probs,) = model(image)
        model.mask_format = "binary"
        (binary,) = model(image)
    assert binary["masks"].dtype == torch.bool and binary["masks"].shape == probs["masks"].shape
    assert torch.equal(binary["masks"], probs["masks"] >= 0.5)


def test_decode_rle_region_equals_the_whole_decode_cropped_for_both_count_formats():
    import numpy as np
    from pycocotools import mask as mask_utils

    from blendmask.models.mask_ops import decode_rle_region, rle_run_lengths

    rng = np.random.default_rng(0)
    for trial in range(100):
        height, width = (int(v) for v in rng.integers(1, 50, 2))
        whole = np.asfortranarray((rng.random((height, width)) < rng.random()).astype(np.uint8))
        compressed = mask_utils.encode(whole)
        uncompressed = {"size": [height, width], "counts": rle_run_lengths(compressed).tolist()}
        y0, y1 = sorted(int(v) for v in rng.integers(0, height + 1, 2))
        x0, x1 = sorted(int(v) for v in rng.integers(0, width + 1, 2))
        for rle in (compressed, {"size": [height, width], "counts": compressed["counts"].decode("ascii")}, uncompressed):
            assert np.array_equal(decode_rle_region(rle, y0, x0, y1, x1), whole[y0:y1, x0:x1].astype(bool)), trial
    assert mask_utils.frPyObjects(uncompressed, height, width)["counts"] == compressed["counts"]
