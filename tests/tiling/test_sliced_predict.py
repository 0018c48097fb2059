"""Sliced prediction: objects cut by seams come out once with the union of their pieces, objects
inside an overlap once, touching objects of other labels apart; one tile equals no tiling."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from blendmask.config import get_config
from blendmask.data import DecodedImage
from blendmask.models import build_model
from blendmask.predict import Predictor
from blendmask.tiling import check_tile_options, sliced_predict, tile_windows


class ColourDetector:
    """A perfect detector of flat-coloured objects: every colour but black in a tile is one
    detection, its label the colour's red value // 50, its mask the colour's pixels in the tile
    (so an object cut by a tile border gives the piece the tile sees)."""

    def __init__(self):
        self.model = SimpleNamespace(proposal_generator=SimpleNamespace(strides=(8, 16, 32)))
        self.calls = []

    def predict_batch(self, images, *, mask_format):
        assert mask_format == "binary"
        self.calls.append(len(images))
        results = []
        for image in images:
            pixels = (image * 255).round().to(torch.int64)
            codes = pixels[0] * 65536 + pixels[1] * 256 + pixels[2]
            found = [c for c in torch.unique(codes).tolist() if c != 0]
            masks = torch.stack([codes == c for c in found])[:, None] if found else torch.zeros((0, 1) + codes.shape, dtype=torch.bool)
            boxes = []
            for m in masks[:, 0]:
                ys, xs = torch.nonzero(m, as_tuple=True)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            results.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                            "labels": torch.tensor([c // 65536 // 50 for c in found], dtype=torch.int64),
                            "scores": torch.linspace(0.9, 0.5, len(found)) if found else torch.zeros(0),
                            "masks": masks})
        return results


def _canvas(height, width, objects):
    """A black uint8 image with ``objects``: ``(label, green, mask)``; returns it and the masks."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for label, green, mask in objects:
        pixels[mask] = (label * 50 + 10, green, 77)
    return DecodedImage(pixels=pixels, bounds=(0.0, 255.0))


def _disc(height, width, cy, cx, r):
    yy, xx = np.mgrid[0:height, 0:width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _decoded(rle):
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def _match(result, masks):
    """Each expected mask equals exactly one result mask; nothing else was found."""
    found = [_decoded(rle) for rle in result["masks_rle"]]
    assert len(found) == len(masks)
    for mask in masks:
        assert sum(np.array_equal(mask, f) for f in found) == 1


def test_windows_cover_the_image_with_equal_tiles():
    windows = tile_windows(100, 230, tile=64, overlap=0.25)
    assert {(y1 - y0, x1 - x0) for y0, x0, y1, x1 in windows} == {(64, 64)}
    covered = np.zeros((100, 230), bool)
    for y0, x0, y1, x1 in windows:
        covered[y0:y1, x0:x1] = True
    assert covered.all() and max(w[2] for w in windows) == 100 and max(w[3] for w in windows) == 230
    assert tile_windows(50, 40, tile=64, overlap=0.5) == [(0, 0, 50, 40)]  # larger than the image: one tile


@pytest.mark.parametrize("tile, overlap, needle", [(16, 0.2, "tile must be an integer >= .*32"),
                                                   (64, 1.0, r"overlap must be a fraction in \[0, 1\)"),
                                                   (64, -0.1, "overlap"), ("big", 0.2, "tile must be")])
def test_bad_tile_options_are_refused_in_one_line(tile, overlap, needle):
    with pytest.raises(ValueError, match=needle) as info:
        check_tile_options(tile, overlap, largest_stride=32)
    assert "\n" not in str(info.value)
    image = _canvas(80, 80, [])
    with pytest.raises(ValueError, match=needle):
        sliced_predict(ColourDetector(), image, tile=tile, overlap=overlap)


def test_an_object_split_over_2_and_over_4_tiles_comes_out_once_whole():
    h, w = 120, 120
    two = _disc(h, w, 30, 60, 12)       # across the vertical seam only (tiles at x 0 and 56, 64 wide)
    four = _disc(h, w, 60, 60, 14)      # across both seams
    image = _canvas(h, w, [(1, 10, two), (1, 20, four)])
    detector = ColourDetector()
    result = sliced_predict(detector, image, tile=64, overlap=0.125, batch_size=3)
    assert result["num_tiles"] == 4 and detector.calls == [3, 1]
    assert result["num_pieces"] > 2
    _match(result, [two, four])
    assert result["labels"].tolist() == [1, 1]


def test_touching_objects_of_different_labels_stay_apart():
    h, w = 120, 120
    left = np.zeros((h, w), bool)
    left[40:70, 40:60] = True
    right = np.zeros((h, w), bool)
    right[40:70, 60:80] = True  # touching ``left`` along the seam region
    image = _canvas(h, w, [(1, 10, left), (2, 20, right)])
    result = sliced_predict(ColourDetector(), image, tile=64, overlap=0.25)
    _match(result, [left, right])
    assert sorted(result["labels"].tolist()) == [1, 2]
    same = _canvas(h, w, [(1, 10, left), (1, 20, right)])  # one label, two objects: apart too
    _match(sliced_predict(ColourDetector(), same, tile=64, overlap=0.25), [left, right])


def test_an_object_inside_an_overlap_appears_once():
    h, w = 64, 120
    inside = _disc(h, w, 32, 60, 3)  # tiles at x 0 and 56 (64 wide): both see all of it
    windows = tile_windows(h, w, tile=64, overlap=0.125)
    assert sum(x0 <= 57 and x1 >= 64 for _, x0, _, x1 in windows) == 2
    result = sliced_predict(ColourDetector(), _canvas(h, w, [(3, 40, inside)]), tile=64, overlap=0.125)
    assert result["num_pieces"] == 2
    _match(result, [inside])
    assert result["boxes"].tolist() == [[57.0, 29.0, 64.0, 36.0]]


def _random_lite_predictor():
    cfg = get_config("lite_mobilenet_v2", {"model.num_classes": 3, "input.min_size_test": 128,
                                           "input.max_size_test": 160, "model.fcos.inference_th": 0.02})
    torch.manual_seed(0)
    model = build_model(cfg, weights_backbone=None).eval()
    with torch.no_grad():
        model.proposal_generator.fcos_head.cls_logits.weight.mul_(10.0)
    return Predictor(model=model, class_names=["a", "b", "c"], score_threshold=0.0)


def test_tiled_prediction_of_an_image_smaller_than_a_tile_equals_untiled():
    predictor = _random_lite_predictor()
    generator = torch.Generator().manual_seed(3)
    image = torch.rand((3, 90, 117), generator=generator)
    untiled = predictor(image, mask_format="rle")
    tiled = sliced_predict(predictor, image, tile="auto")
    assert tiled["num_tiles"] == 1 and len(untiled["scores"]) > 5
    order = torch.argsort(-untiled["scores"], stable=True)
    assert torch.equal(tiled["scores"], untiled["scores"][order])
    assert torch.equal(tiled["labels"], untiled["labels"][order])
    assert torch.equal(tiled["boxes"], untiled["boxes"][order])
    assert tiled["masks_rle"] == [untiled["masks_rle"][i] for i in order.tolist()]
