"""slice-data: annotations cut at tile borders keep their area, map back to the whole objects,
slivers and empty tiles follow the options, and nothing is written over."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from blendmask.data import CocoInstanceDataset, resolve_split
from blendmask.data.slicing import slice_dataset
from blendmask.tiling import Pieces, merge_pieces, tile_windows

H, W = 100, 130
POLYGONS = {  # category id: polygon (x, y, x, y, ...)
    1: [10.5, 10.5, 90.5, 20.5, 40.5, 80.5],             # a triangle over several tiles
    2: [60.0, 50.0, 125.0, 50.0, 125.0, 95.0, 60.0, 95.0],  # a rectangle across a seam
    3: [5.0, 85.0, 15.0, 85.0, 15.0, 95.0, 5.0, 95.0],     # a small square inside one tile
}


@pytest.fixture()
def source(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(tmp_path / "images" / "big.png")
    anns = [{"id": 10 + c, "image_id": 7, "category_id": c, "segmentation": [poly], "iscrowd": 0,
             "bbox": [min(poly[0::2]), min(poly[1::2]), max(poly[0::2]) - min(poly[0::2]), max(poly[1::2]) - min(poly[1::2])],
             "area": _shoelace(poly)} for c, poly in POLYGONS.items()]
    data = {"images": [{"id": 7, "file_name": "big.png", "height": H, "width": W}], "annotations": anns,
            "categories": [{"id": c, "name": f"c{c}"} for c in POLYGONS]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path


def _shoelace(poly):
    x, y = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _whole_masks():
    return {c: mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([p], H, W))).astype(bool) for c, p in POLYGONS.items()}


def _load(out):
    data = json.loads((out / "annotations" / "instances_train.json").read_text())
    return data["images"], data["annotations"]


def _decode(rle):
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def test_cut_annotations_keep_their_area(source):
    out = slice_dataset(source / "ann.json", source / "images", source / "out", tile=48, overlap=0.0,
                        min_area_fraction=0.0)
    images, anns = _load(out)
    assert len(images) == 9  # 3 x 3 windows of 48 (the last ones moved back inside) with overlap 0
    whole = _whole_masks()
    for c, poly in POLYGONS.items():
        pieces = [a for a in anns if a["category_id"] == c]
        assert all(a["area"] == np.count_nonzero(_decode(a["segmentation"])) for a in pieces)
        covered = np.zeros((H, W), bool)
        for a in pieces:
            y0, x0, y1, x1 = next(i["window"] for i in images if i["id"] == a["image_id"])
            covered[y0:y1, x0:x1] |= _decode(a["segmentation"])
        assert np.array_equal(covered, whole[c])  # the pieces rebuild the mask exactly
        perimeter = sum(np.hypot(np.diff(poly[0::2] + poly[:1]), np.diff(poly[1::2] + poly[1:2])))
        assert abs(np.count_nonzero(whole[c]) - _shoelace(poly)) <= perimeter  # rasterisation error only
    dataset = CocoInstanceDataset(*resolve_split(out, "train"))
    assert len(dataset) == 9 and dataset.class_names == ["c1", "c2", "c3"]


def test_round_trip_tile_annotations_map_back_to_the_objects(source):
    out = slice_dataset(source / "ann.json", source / "images", source / "out", tile=64, overlap=0.25,
                        min_area_fraction=0.0)
    images, anns = _load(out)
    windows = {i["id"]: i["window"] for i in images}
    pieces = Pieces()
    for a in anns:
        y0, x0 = windows[a["image_id"]][:2]
        crop_mask = _decode(a["segmentation"])
        x, y, w, h = (int(v) for v in a["bbox"])
        pieces.crops.append(crop_mask[y:y + h, x:x + w])
        pieces.origins.append((x0 + x, y0 + y))
        pieces.boxes.append(np.array([x0 + x, y0 + y, x0 + x + w, y0 + y + h], float))
        pieces.scores.append(1.0)
        pieces.labels.append(a["category_id"])
        pieces.tiles.append(a["image_id"])
    merged = merge_pieces(pieces, threshold=0.3, cell=64)
    whole = _whole_masks()
    assert sorted(m.label for m in merged) == sorted(POLYGONS)
    for m in merged:
        rebuilt = np.zeros((H, W), bool)
        rebuilt[m.origin[1]:m.origin[1] + m.crop.shape[0], m.origin[0]:m.origin[0] + m.crop.shape[1]] = m.crop
        assert np.array_equal(rebuilt, whole[m.label])


def test_slivers_and_empty_tiles_follow_the_options(source):
    out = slice_dataset(source / "ann.json", source / "images", source / "slivers", tile=48, overlap=0.0,
                        min_area_fraction=0.3)
    images, anns = _load(out)
    whole = {c: np.count_nonzero(m) for c, m in _whole_masks().items()}
    assert anns and all(a["area"] >= 0.3 * whole[a["category_id"]] for a in anns)
    assert {a["image_id"] for a in anns} == {i["id"] for i in images}  # no empty tile by default
    kept = slice_dataset(source / "ann.json", source / "images", source / "empty", tile=16, overlap=0.0,
                         min_area_fraction=0.0, empty_ratio=0.25, seed=1)
    images, anns = _load(kept)
    with_anns = {a["image_id"] for a in anns}
    empty_available = len(tile_windows(H, W, tile=16, overlap=0.0)) - len(with_anns)
    assert empty_available > round(0.25 * len(with_anns)) > 0
    assert len(images) - len(with_anns) == round(0.25 * len(with_anns))


def test_refuses_an_output_it_did_not_create(source):
    (source / "taken").mkdir()
    (source / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        slice_dataset(source / "ann.json", source / "images", source / "taken", tile=48)
    assert [p.name for p in (source / "taken").iterdir()] == ["notes.txt"]
    with pytest.raises(ValueError, match="overlap"):
        slice_dataset(source / "ann.json", source / "images", source / "new", tile=48, overlap=1.0)


def test_the_command_line_writes_a_data_directory(source, capsys):
    from blendmask.cli import main

    assert main(["slice-data", str(source / "ann.json"), str(source / "cli"), "--tile", "64"]) == 0
    assert len(CocoInstanceDataset(*resolve_split(source / "cli", "train"))) == len(tile_windows(H, W, tile=64, overlap=0.2))
    assert main(["slice-data", str(source / "ann.json"), str(source / "cli"), "--tile", "64"]) == 1
    assert "not an empty directory" in capsys.readouterr().err


def _cut_pieces_as_image_masks(per_window, windows, height, width):
    """The pieces of each source annotation, put back in image coordinates: {annotation id: mask}."""
    masks = {}
    for (y0, x0, y1, x1), pieces in zip(windows, per_window):
        for piece in pieces:
            mask = masks.setdefault(piece["source_annotation_id"], np.zeros((height, width), bool))
            mask[y0:y1, x0:x1] |= _decode(piece["segmentation"])
    return masks


def test_each_annotation_is_cut_from_its_own_box_exactly_as_from_the_whole_mask():
    from types import SimpleNamespace

    from blendmask.data.slicing import _tile_annotations

    rng = np.random.default_rng(5)
    height, width = 90, 140
    anns, expected = [], {}
    for k in range(30):  # polygons (some past the image's borders), compressed and uncompressed RLEs
        cx, cy = rng.uniform(-10, width + 10), rng.uniform(-10, height + 10)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
        radii = rng.uniform(3, 30, 7)
        polygon = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).ravel().tolist()
        whole = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], height, width)))
        if k % 3 == 0:
            segmentation = [polygon]
        else:
            rle = mask_utils.encode(np.asfortranarray(whole))
            segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
            if k % 3 == 2:
                from blendmask.models.mask_ops import rle_run_lengths

                segmentation["counts"] = rle_run_lengths(segmentation).tolist()
        anns.append({"id": k, "category_id": 1, "segmentation": segmentation})
        expected[k] = whole.astype(bool)
    windows = tile_windows(height, width, tile=32, overlap=0.25)
    coco = SimpleNamespace(imgToAnns={1: anns})
    per_window = _tile_annotations(coco, {"id": 1, "height": height, "width": width}, windows, 0.0)
    got = _cut_pieces_as_image_masks(per_window, windows, height, width)
    for k, whole in expected.items():
        assert np.array_equal(got.get(k, np.zeros_like(whole)), whole), k


def test_slicing_a_20000_pixel_image_never_makes_an_image_sized_mask():
    import tracemalloc
    from types import SimpleNamespace

    from blendmask.data.slicing import _tile_annotations
    from blendmask.models.mask_ops import encode_region_rle, rle_run_lengths

    side = 20_000  # an image-sized bool mask: 400 MB
    disc = _disc_mask(41)
    rle = encode_region_rle(disc, 10_000, 12_270, side, side)  # across the column seam at x 12,288
    anns = [{"id": 1, "category_id": 1, "segmentation": [[10_230.5, 500.5, 10_300.5, 520.5, 10_250.5, 560.5]]},
            {"id": 2, "category_id": 1, "segmentation": rle},
            {"id": 3, "category_id": 1, "segmentation": {"size": [side, side], "counts": rle_run_lengths(rle).tolist()}}]
    windows = tile_windows(side, side, tile=512, overlap=0.0)
    tracemalloc.start()
    try:
        per_window = _tile_annotations(SimpleNamespace(imgToAnns={1: anns}), {"id": 1, "height": side, "width": side},
                                       windows, 0.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, peak
    cut = {k: [(w, p) for w, pieces in zip(windows, per_window) for p in pieces if p["source_annotation_id"] == k]
           for k in (1, 2, 3)}
    assert len(cut[1]) == 4 and len(cut[2]) == len(cut[3]) == 2  # the polygon crosses a row and a column seam
    for k in (2, 3):  # the RLE's pieces rebuild the disc
        rebuilt = np.zeros((50, 41), bool)
        for (y0, x0, y1, x1), piece in cut[k]:
            x, y, w, h = (int(v) for v in piece["bbox"])
            rebuilt[y0 + y - 10_000:y0 + y + h - 10_000, x0 + x - 12_270:x0 + x + w - 12_270] |= \
                _decode(piece["segmentation"])[y:y + h, x:x + w]
        assert np.array_equal(rebuilt[:41], disc) and sum(p["area"] for _, p in cut[k]) == disc.sum()


def _disc_mask(size):
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= (size // 2) ** 2
