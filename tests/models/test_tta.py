"""Test-time augmentation: flip-equivariant outputs are unchanged, merged instances are not
duplicated, boxes are fused by score, instances seen by one pass are discounted, sizes are set per pass."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from blendmask.models.mask_ops import encode_masks_rle
from blendmask.models.tta import TestTimeAugmentation, default_test_sizes


class _Transform:
    def __init__(self):
        self.min_size_test = 100


class _BrightBlobs(nn.Module):
    """Detects every connected run of bright columns as one instance: its pixels > 0.5 are the mask
    (probability 0.9), the box is their extent, the score the blob's mean brightness, the label
    0 for blobs in the top half. Flip-equivariant and independent of the test size; with
    ``shift_when_flipped``, the boxes and masks of a flipped image move by that many pixels."""

    def __init__(self, shift_when_flipped=0.0):
        super().__init__()
        self.transform = _Transform()
        self.sizes_seen = []
        self.mask_format = "probs"
        self.shift = shift_when_flipped
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        out = []
        for image in images:
            self.sizes_seen.append(self.transform.min_size_test)
            bright = image[0] > 0.5
            columns = bright.any(0).int()
            starts = ((columns[1:] - columns[:-1]) == 1).nonzero().flatten() + 1
            starts = ([0] if columns[0] else []) + starts.tolist()
            boxes, scores, labels, masks = [], [], [], []
            for x0 in starts:
                x1 = x0
                while x1 < len(columns) and columns[x1]:
                    x1 += 1
                blob = torch.zeros_like(bright)
                blob[:, x0:x1] = bright[:, x0:x1]
                ys = blob.any(1).nonzero().flatten()
                y0, y1 = int(ys[0]), int(ys[-1]) + 1
                flipped_input = bool(image[1, 0, 0] > 0.5)  # the test image marks its left edge
                shift = self.shift if flipped_input else 0.0
                boxes.append([x0 + shift, y0, x1 + shift, y1])
                scores.append(float(image[0][blob].mean()))
                labels.append(0 if y0 < image.shape[1] // 2 else 1)
                masks.append(torch.roll(blob.float() * 0.9, int(shift), dims=1))
            n = len(boxes)
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
                        "scores": torch.tensor(scores), "labels": torch.tensor(labels, dtype=torch.int64),
                        "masks": torch.stack(masks)[:, None] if n else torch.zeros(0, 1, *image.shape[1:])})
        return out


def _image():
    image = torch.zeros(3, 20, 30)
    image[0, 2:8, 3:9] = 0.8     # blob A, top half
    image[0, 12:18, 14:20] = 0.7  # blob B, bottom half
    image[0, 4:6, 24:27] = 0.6    # blob C, top half
    image[1, :, -1] = 1.0         # marks the right edge: seen at the left only when the image is flipped
    return image


def test_flip_equivariant_model_gives_the_same_result_with_and_without_tta():
    model = _BrightBlobs()
    plain = model([_image()])[0]
    tta = TestTimeAugmentation(model, sizes=(80, 100, 120), flip=True)
    merged = tta([_image()])[0]
    assert len(merged["boxes"]) == len(plain["boxes"]) == 3  # merged across 6 passes, not duplicated
    order = torch.argsort(plain["scores"], descending=True)
    assert torch.allclose(merged["boxes"], plain["boxes"][order], atol=1e-5)
    assert torch.allclose(merged["scores"], plain["scores"][order], atol=1e-6)
    assert torch.equal(merged["labels"], plain["labels"][order])
    assert torch.allclose(merged["masks"], plain["masks"][order], atol=1e-6)  # a mean of six equal floats
    assert model.sizes_seen[1:] == [80, 80, 100, 100, 120, 120] and model.transform.min_size_test == 100


def test_boxes_are_fused_by_score_and_single_pass_instances_discounted():
    model = _BrightBlobs(shift_when_flipped=-1.0)  # a flipped pass sees every box 1 px to the right
    merged = TestTimeAugmentation(model, flip=True)([_image()])[0]
    # blob C is 3 px wide: its shifted copies overlap with IoU 0.5 < 0.55, so they stay apart, at half score
    assert len(merged["boxes"]) == 4
    assert torch.allclose(merged["scores"], torch.tensor([0.8, 0.7, 0.3, 0.3]))
    assert merged["boxes"][2:].tolist() == [[24.0, 4.0, 27.0, 6.0], [25.0, 4.0, 28.0, 6.0]]
    # both passes score a blob alike, so the fused box is the midpoint, 0.5 px right of the plain one
    assert torch.allclose(merged["boxes"][0], torch.tensor([3.5, 2.0, 9.5, 8.0]))
    # the two masks differ by the shift: their mean is 0.9 where both are set, 0.45 on the edges
    values = merged["masks"][0, 0].unique()
    assert torch.allclose(values, torch.tensor([0.0, 0.45, 0.9]))
    assert torch.allclose(merged["masks"][0, 0, 2:8, 3], torch.full((6,), 0.45))  # seen by the plain pass only
    assert torch.allclose(merged["masks"][0, 0, 2:8, 9], torch.full((6,), 0.45))  # by the flipped pass only

    lonely = TestTimeAugmentation(model, flip=True, iou_threshold=0.99)([_image()])[0]
    assert len(lonely["boxes"]) == 6  # nothing merges at IoU 0.99: each pass's instance is kept, at half score
    assert torch.allclose(lonely["scores"][:2], torch.tensor([0.4, 0.4]))


def test_neighbours_of_one_pass_are_not_merged_together():
    image = torch.zeros(3, 20, 30)
    image[0, 2:8, 3:9] = 0.8
    image[0, 2:8, 10:16] = 0.8  # a second blob next to the first, same class
    model = _BrightBlobs()
    tta = TestTimeAugmentation(model, flip=False, iou_threshold=0.0001)
    assert len(tta([image])[0]["boxes"]) == 2


def test_mask_formats_rle_and_binary():
    model = _BrightBlobs()
    tta = TestTimeAugmentation(model, flip=True)
    probs = tta([_image()])[0]["masks"]
    tta.mask_format = "binary"
    binary = tta([_image()])[0]["masks"]
    assert binary.dtype == torch.bool and torch.equal(binary, probs >= 0.5)
    tta.mask_format = "rle"
    out = tta([_image()])[0]
    assert "masks" not in out and out["masks_rle"] == encode_masks_rle(probs[:, 0])
    tta.mask_format = "nope"
    with pytest.raises(ValueError, match="mask_format"):
        tta([_image()])


def test_bad_arguments():
    with pytest.raises(ValueError, match="sizes"):
        TestTimeAugmentation(_BrightBlobs(), sizes=(0,))
    with pytest.raises(ValueError, match="min_size_test"):
        TestTimeAugmentation(nn.Linear(1, 1), sizes=(100,))
    with pytest.raises(ValueError, match="iou_threshold"):
        TestTimeAugmentation(_BrightBlobs(), iou_threshold=0.0)
    assert default_test_sizes(800) == (640, 800, 960)


def test_wrapper_starts_in_eval_mode():
    """evaluate_model restores the training flag it found: a wrapper in training mode would ask
    the folded inference model to train."""
    tta = TestTimeAugmentation(_BrightBlobs())
    assert not tta.training and not tta.model.training
