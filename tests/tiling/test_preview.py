"""Pictures of a large image: the downscaled overview with its crops outlined and numbered, and
full-resolution crops of the densest regions, never a full-size float copy of the image."""
from __future__ import annotations

import json
import tracemalloc
from types import SimpleNamespace

import numpy as np
import tifffile
import torch
from PIL import Image

from blendmask.data import DecodedImage, ImageReading
from blendmask.predict import predict_files
from blendmask.tiling.preview import DEFAULT_CROP_SIDE, DEFAULT_PREVIEW_SIDE, crop_view, densest_windows
from blendmask.visualize import REGION_COLOUR, outline_regions


def _result(boxes, crops):
    n = len(boxes)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.zeros(n, dtype=torch.int64),
            "scores": torch.linspace(0.9, 0.5, n), "mask_crops": crops}


def test_densest_windows_hold_the_most_centres_best_first_and_none_empty():
    # 300 x 250 image, 100-px windows: columns start 0, 100, 150 (the last moved back inside)
    boxes = [[10, 10, 20, 20]] + [[120, 210, 130, 220]] * 3 + [[260, 110, 270, 120]] * 2
    windows = densest_windows(_result(boxes, []), 250, 300, side=100, count=5)
    assert windows == [(150, 100, 250, 200), (100, 200, 200, 300), (0, 0, 100, 100)]
    assert densest_windows(_result(boxes, []), 250, 300, side=100, count=1) == [(150, 100, 250, 200)]
    assert densest_windows(_result([], []), 250, 300, side=100, count=4) == []


def test_crop_view_is_the_window_at_native_resolution_with_detections_clipped_to_it():
    rng = np.random.default_rng(0)
    image = DecodedImage(pixels=rng.integers(0, 256, (200, 300, 3), dtype=np.uint8), bounds=(0.0, 255.0))
    inside = np.ones((10, 10), bool)
    straddling = np.eye(40, dtype=bool)  # from (x 80, y 30) to (x 119, y 69): the window starts at x 100
    result = _result([[150, 50, 160, 60], [80, 30, 120, 70], [0, 0, 10, 10]],
                     [(150, 50, inside), (80, 30, straddling), (0, 0, inside)])
    picture, view = crop_view(image, result, (20, 100, 120, 200))
    assert np.array_equal(np.asarray(picture), image.pixels[20:120, 100:200])
    assert view["boxes"].tolist() == [[50, 30, 60, 40], [0, 10, 20, 50]]
    assert view["scores"].tolist() == result["scores"][:2].tolist()
    (x0, y0, c0), (x1, y1, c1) = view["mask_crops"]
    assert (x0, y0) == (50, 30) and np.array_equal(c0, inside)
    assert (x1, y1) == (0, 10) and np.array_equal(c1, straddling[:, 20:])  # rows y 30..69, columns x 100..119


def test_outline_regions_draws_a_light_line_with_a_dark_one_outside():
    picture = Image.new("RGB", (500, 400), (90, 90, 90))
    outline_regions(picture, [(100, 50, 300, 250)], ["1"])
    pixels = np.asarray(picture)
    assert tuple(pixels[249, 200]) == REGION_COLOUR and tuple(pixels[250, 200]) == (0, 0, 0)
    assert tuple(pixels[150, 100]) == REGION_COLOUR and tuple(pixels[150, 99]) == (0, 0, 0)
    assert tuple(pixels[150, 200]) == (90, 90, 90)  # the inside is left as it was


class SquareDetector:
    """Every non-gray colour of a tile is one detection (label 0): gray pixels (r = g = b) are
    background, so a textured gray background shows whether a picture is at native resolution."""

    def __init__(self):
        self.model = SimpleNamespace(proposal_generator=SimpleNamespace(strides=(8, 16, 32)))
        self.class_names = ["square"]
        self.score_threshold = 0.3
        self.reading = ImageReading(max_pixels=10**8)

    def predict_batch(self, images, *, mask_format):
        results = []
        for image in images:
            pixels = (image * 255).round().to(torch.int64)
            coloured = (pixels[0] != pixels[1]) | (pixels[1] != pixels[2])
            codes = torch.where(coloured, pixels[0] * 65536 + pixels[1] * 256 + pixels[2], -1)
            found = [c for c in torch.unique(codes).tolist() if c >= 0]
            masks = torch.stack([codes == c for c in found])[:, None] if found else torch.zeros((0, 1) + codes.shape, dtype=torch.bool)
            boxes = []
            for m in masks[:, 0]:
                ys, xs = torch.nonzero(m, as_tuple=True)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            results.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                            "labels": torch.zeros(len(found), dtype=torch.int64),
                            "scores": torch.full((len(found),), 0.9), "masks": masks})
        return results


def _large_image(path, height, width, squares):
    """A gray-noise image with 8x8 coloured squares at ``squares`` ``(y, x)``; returns its pixels."""
    rng = np.random.default_rng(1)
    pixels = np.repeat(rng.integers(0, 256, (height, width, 1), dtype=np.uint8), 3, axis=2)
    for k, (y, x) in enumerate(squares):
        pixels[y:y + 8, x:x + 8] = (200, 10 + k, 60)
    if path.suffix == ".tif":
        tifffile.imwrite(path, pixels, photometric="rgb")
    else:
        Image.fromarray(pixels).save(path)
    return pixels


def test_a_large_image_gets_an_outlined_overview_and_native_crops_of_its_densest_regions(tmp_path):
    height, width = 300, 5000
    cluster = [(40 + 30 * (k // 5), 3100 + 30 * (k % 5)) for k in range(25)]  # 25 squares near x 3100-3230
    lone = [(150, 200), (150, 4700)]
    pixels = _large_image(tmp_path / "wide.png", height, width, cluster + lone)
    files = predict_files(SquareDetector(), [tmp_path / "wide.png"], tmp_path / "out", tile=256, tile_overlap=0.0)
    record = json.loads(files.results_json.read_text())["images"][0]
    assert len(record["instances"]) == 27
    crops = record["crops"]
    assert [c["file"] for c in crops] == [str(p) for p in files.crops] and all(p.is_file() for p in files.crops)
    assert 1 <= len(crops) <= 4 and crops[0]["x0"] <= 3100 and 3238 <= crops[0]["x1"]  # the cluster first
    for crop in crops:
        picture = np.asarray(Image.open(crop["file"]).convert("RGB"))
        window = pixels[crop["y0"]:crop["y1"], crop["x0"]:crop["x1"]]
        assert crop["x1"] - crop["x0"] == crop["y1"] - crop["y0"] or crop["y1"] - crop["y0"] == height
        assert window.shape[:2] == (min(height, DEFAULT_CROP_SIDE), DEFAULT_CROP_SIDE)
        assert picture.shape[0] == window.shape[0] and picture.shape[1] >= window.shape[1]  # a legend may widen it
        # native resolution: the gray texture is there pixel for pixel away from the squares' drawings
        far = np.ones(window.shape[:2], bool)
        for y, x in cluster + lone:
            far[max(0, y - 60 - crop["y0"]):max(0, y + 70 - crop["y0"]), max(0, x - 90 - crop["x0"]):max(0, x + 100 - crop["x0"])] = False
        assert far.sum() > 0.3 * far.size and np.array_equal(picture[:, :window.shape[1]][far], window[far])
    overview = np.asarray(Image.open(record["overlay"]).convert("RGB"))
    step = -(-width // DEFAULT_PREVIEW_SIDE)
    assert overview.shape[0] == -(-height // step) <= DEFAULT_PREVIEW_SIDE
    for crop in crops:  # each crop's place is outlined on the overview (bottom edge: light, then dark below)
        bottom, middle = -(-crop["y1"] // step) - 1, (crop["x0"] + crop["x1"]) // (2 * step)
        if bottom + 1 < overview.shape[0]:
            assert tuple(overview[bottom + 1, middle]) == (0, 0, 0)
        assert tuple(overview[bottom, middle]) == REGION_COLOUR


def test_an_image_within_the_preview_size_gets_no_crops(tmp_path):
    _large_image(tmp_path / "small.png", 200, 600, [(50, 50), (100, 300)])
    files = predict_files(SquareDetector(), [tmp_path / "small.png"], tmp_path / "out", tile=256, tile_overlap=0.0)
    assert files.crops == [] and json.loads(files.results_json.read_text())["images"][0]["crops"] == []


def test_drawing_a_large_image_never_makes_a_full_size_float_copy(tmp_path):
    height, width = 2000, 8000  # uint8 48 MB; as float32 192 MB
    _large_image(tmp_path / "big.tif", height, width, [(100 + 40 * k, 200 + 700 * k) for k in range(8)])
    tracemalloc.start()
    try:
        files = predict_files(SquareDetector(), [tmp_path / "big.tif"], tmp_path / "out", tile=1000, tile_overlap=0.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert files.crops  # the crops were drawn too
    image_bytes, float_bytes = height * width * 3, height * width * 3 * 4
    assert peak < image_bytes + float_bytes / 2, (peak, image_bytes)
