"""Polygon masks through the training pipeline (issue 11 §1.4): kept as vertices by the dataset and the
transforms, rasterised inside their boxes for the mask targets (detectron2's ``PolygonMasks.crop_and_resize``
convention) and at the semantic target's stride, so that no ``n x H x W`` mask is built for them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from blendmask.data import CocoInstanceDataset, Compose, RandomHorizontalFlip
from blendmask.data.transforms import RandomInstanceCrop
from blendmask.models import blendmask_mobilenet_v2_fpn
from blendmask.models.bottom import semantic_targets_from_instances
from blendmask.models.mask_ops import crop_and_resize_masks
from blendmask.polygons import PolygonMasks, clip_polygon

from tests.helpers.coco_files import write_coco


def _square(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _random_polygons(rng, n, height, width, *, parts=1):
    """``n`` instances of ``parts`` random star-shaped polygons each (some crossing the border)."""
    out = []
    for _ in range(n):
        inst = []
        for _ in range(parts):
            k = rng.integers(3, 14)
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            radius = rng.uniform(4, min(height, width) / 3) * rng.uniform(0.3, 1.0, k)
            angles = np.sort(rng.uniform(0, 2 * np.pi, k))
            inst.append(np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1).reshape(-1).tolist())
        out.append(inst)
    return out


# ----------------------------------------------------------------------------- in-box rasterisation


def test_mask_targets_of_polygons_follow_detectron2s_convention_on_hand_cases():
    """Shift by the box's (x0, y0), scale by R / box size, rasterise at R x R: cell (i, j) is set when the
    image point (x0 + (j + 0.5) w / R, y0 + (i + 0.5) h / R) is inside the polygon."""
    # the box of the square: every cell
    masks = PolygonMasks([[_square(10, 10, 30, 30)]], (40, 40))
    assert crop_and_resize_masks(masks, torch.tensor([[10.0, 10.0, 30.0, 30.0]]), 4).eq(1).all()
    # a larger box: the sample points 5, 15, 25, 35 -> the square [10, 30] holds the middle two
    out = crop_and_resize_masks(masks, torch.tensor([[0.0, 0.0, 40.0, 40.0]]), 4)[0]
    expected = torch.zeros(4, 4)
    expected[1:3, 1:3] = 1
    assert torch.equal(out, expected)
    # a box of different width and height: the scales differ (x by 4/40, y by 4/10)
    wide = PolygonMasks([[_square(0, 0, 20, 10)]], (10, 40))
    out = crop_and_resize_masks(wide, torch.tensor([[0.0, 0.0, 40.0, 10.0]]), 4)[0]
    expected = torch.zeros(4, 4)
    expected[:, :2] = 1
    assert torch.equal(out, expected)
    # a triangle x + y < 4.2 in the box [0, 4]^2 at R = 8: sample points ((j + .5) / 2, (i + .5) / 2)
    tri = PolygonMasks([[[0.0, 0.0, 4.2, 0.0, 0.0, 4.2]]], (8, 8))
    out = crop_and_resize_masks(tri, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 8)[0]
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    assert torch.equal(out, (i + j <= 7).float())
    # a box thinner than 0.1 px is scaled as 0.1 px wide: the polygon [10, 10.05] covers half of the grid
    thin = PolygonMasks([[_square(10.0, 0.0, 10.05, 4.0)]], (4, 20))
    out = crop_and_resize_masks(thin, torch.tensor([[10.0, 0.0, 10.05, 4.0]]), 4)[0]
    expected = torch.zeros(4, 4)
    expected[:, :2] = 1
    assert torch.equal(out, expected)
    # the union of an instance's polygons, one target per instance, float32 0/1
    two = PolygonMasks([[_square(0, 0, 2, 4), _square(2, 0, 4, 4)], [_square(0, 0, 4, 2)]], (4, 4))
    out = crop_and_resize_masks(two, torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 2), 4)
    assert out.dtype == torch.float32 and out.shape == (2, 4, 4)
    assert out[0].eq(1).all() and out[1, :2].eq(1).all() and out[1, 2:].eq(0).all()


def test_in_box_targets_are_sharper_than_cropping_a_full_image_bitmask():
    """A thin diagonal strip in a large box: rasterised in the box it is the strip at R x R resolution;
    the bitmask path (rasterise at image resolution, then RoIAlign) loses it where the image pixels are
    coarser than the R x R cells (no cell center lies on an edge, so the exact answer is unambiguous)."""
    strip = PolygonMasks([[[0.0, 0.0, 1.3, 0.0, 8.0, 6.7, 8.0, 8.0, 6.7, 8.0, 0.0, 1.3]]], (8, 8))
    box = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    in_box = crop_and_resize_masks(strip, box, 32)[0]
    via_bitmask = crop_and_resize_masks(strip.to_bitmasks(), box, 32)[0]
    y, x = torch.meshgrid((torch.arange(32) + 0.5) / 4, (torch.arange(32) + 0.5) / 4, indexing="ij")
    exact = (x - y).abs() < 1.3  # the strip between its two parallel edges, at the cells' centers
    assert (in_box.bool() != exact).float().mean() < 0.02
    assert (via_bitmask.bool() != exact).float().mean() > 2 * (in_box.bool() != exact).float().mean()


# ----------------------------------------------------------------------------- transforms


def test_clip_polygon_hand_cases():
    # a square half outside the window: the inside half, exactly on the edge
    clipped = clip_polygon(np.array(_square(-2.0, 1.0, 2.0, 3.0)), 0, 0, 10, 10).reshape(-1, 2)
    assert clipped[:, 0].min() == 0.0 and clipped[:, 0].max() == 2.0
    assert clipped[:, 1].min() == 1.0 and clipped[:, 1].max() == 3.0
    # outside, or touching the window along an edge only: nothing
    assert clip_polygon(np.array(_square(12.0, 1.0, 14.0, 3.0)), 0, 0, 10, 10) is None
    assert clip_polygon(np.array(_square(-2.0, 1.0, 0.0, 3.0)), 0, 0, 10, 10) is None
    # a U leaving and re-entering the window through its bottom edge: the area inside is kept
    u = np.array([1.0, 1.0, 9.0, 1.0, 9.0, 14.0, 7.0, 14.0, 7.0, 4.0, 3.0, 4.0, 3.0, 14.0, 1.0, 14.0])
    xy = clip_polygon(u, 0, 0, 10, 10).reshape(-1, 2)
    area = 0.5 * abs(np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1)))
    assert area == pytest.approx(8 * 3 + 2 * (2 * 6))
    assert xy[:, 1].max() == 10.0


def _extent_inside(xy, x0, y0, x1, y1):
    """The extent of (simple) polygon ``xy`` (k, 2) inside the window, computed independently of the
    clipping: from its vertices inside, its edges' crossings of the window's edges, and the window's
    corners inside the polygon (even-odd rule)."""
    points = [p for p in xy if x0 <= p[0] <= x1 and y0 <= p[1] <= y1]
    for a, b in zip(xy, np.roll(xy, -1, axis=0)):
        for axis, bound in ((0, x0), (0, x1), (1, y0), (1, y1)):
            if (a[axis] - bound) * (b[axis] - bound) < 0:
                p = a + (bound - a[axis]) / (b[axis] - a[axis]) * (b - a)
                if x0 - 1e-9 <= p[0] <= x1 + 1e-9 and y0 - 1e-9 <= p[1] <= y1 + 1e-9:
                    points.append(p)
    for cx, cy in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
        crossings = sum(((a[1] > cy) != (b[1] > cy)) and cx < a[0] + (cy - a[1]) / (b[1] - a[1]) * (b[0] - a[0])
                        for a, b in zip(xy, np.roll(xy, -1, axis=0)))
        if crossings % 2:
            points.append(np.array([cx, cy]))
    if not points:
        return None
    points = np.array(points)
    return np.concatenate([points.min(0), points.max(0)])


def test_clipped_polygons_span_exactly_their_part_inside_the_window():
    """The vertices left by the clip span the polygon's part inside the window (no window corner the
    polygon does not cover, which Sutherland-Hodgman's degenerate edges along the window would add), so
    the crop's recomputed boxes are the boxes of the visible parts."""
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(2000):
        (poly,) = _random_polygons(rng, 1, 60, 80)[0]
        xy = np.array(poly).reshape(-1, 2)
        x0, y0 = rng.integers(0, 20), rng.integers(0, 15)
        x1, y1 = x0 + rng.integers(30, 60), y0 + rng.integers(25, 45)
        clipped = clip_polygon(np.array(poly), x0, y0, x1, y1)
        expected = _extent_inside(xy, x0, y0, x1, y1)
        if clipped is None:
            assert expected is None or (expected[2] - expected[0]) * (expected[3] - expected[1]) < 1e-6
            continue
        c = clipped.reshape(-1, 2)
        np.testing.assert_allclose(np.concatenate([c.min(0), c.max(0)]), expected, atol=1e-9)
        checked += 1
    assert checked > 100


def test_flip_resize_and_crop_move_the_vertices_as_the_pixels():
    """Each transform of the polygons, rasterised, equals the same transform of their full-image bitmasks
    but for a few edge pixels (pycocotools rounds vertices to 1/5 pixel, and its scanlines are not mirror
    symmetric); the crop's boxes are the extents of the clipped vertices."""
    rng = np.random.default_rng(0)
    height, width = 60, 80
    masks = PolygonMasks(_random_polygons(rng, 12, height, width, parts=2), (height, width))
    full = masks.to_bitmasks()
    assert (masks.hflip().to_bitmasks() != full.flip(-1)).sum() <= 0.005 * full.sum()

    cropped = masks.crop(13, 7, 50, 40)
    assert cropped.image_size == (40, 50) and len(cropped) == 12
    assert (cropped.to_bitmasks() != full[:, 7:47, 13:63]).sum() <= 0.005 * full[:, 7:47, 13:63].sum()
    for inst, box in zip(cropped.polygons, cropped.bounding_boxes()):
        if inst:
            xy = np.concatenate(inst).reshape(-1, 2)
            assert (xy >= 0).all() and (xy[:, 0] <= 50).all() and (xy[:, 1] <= 40).all()
            assert box.tolist() == pytest.approx([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()])

    resized = masks.resize((120, 160))
    assert resized.image_size == (120, 160)
    for a, b in zip(resized.polygons, masks.polygons):
        for p, q in zip(a, b):
            np.testing.assert_allclose(p, q * 2.0)


def test_instance_crop_keeps_polygons_boxes_and_labels_aligned():
    """The relative crop of polygon targets: boxes recomputed from the clipped vertices, instances left
    with no polygon dropped from boxes, labels and masks alike."""
    polygons = [[_square(2, 2, 10, 10)], [_square(50, 30, 58, 38)], [_square(20, 20, 40, 36)]]
    masks = PolygonMasks(polygons, (40, 60))
    target = {"boxes": masks.bounding_boxes(), "labels": torch.tensor([0, 1, 2]), "masks": masks, "image_id": 1}
    crop = RandomInstanceCrop("relative", (0.5, 0.5))  # 20 x 30
    torch.manual_seed(0)
    seen = set()
    for _ in range(30):
        image, out = crop(torch.rand(3, 40, 60), dict(target))
        assert image.shape == (3, 20, 30)
        m = out["masks"]
        assert isinstance(m, PolygonMasks) and m.image_size == (20, 30)
        assert len(m) == len(out["labels"]) == len(out["boxes"]) >= 1
        assert m.nonempty().all()
        assert torch.equal(out["boxes"], m.bounding_boxes())
        full = m.to_bitmasks()
        for mask, box in zip(full, out["boxes"]):  # the vertex box is the pixel box here (integer corners)
            ys, xs = mask.nonzero(as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        seen.update(out["labels"].tolist())
    assert seen == {0, 1, 2}


def test_horizontal_flip_of_polygon_targets():
    masks = PolygonMasks([[_square(2, 3, 10, 9)]], (20, 30))
    target = {"boxes": masks.bounding_boxes(), "labels": torch.tensor([0]), "masks": masks}
    _, out = RandomHorizontalFlip(p=1.0)(torch.rand(3, 20, 30), target)
    assert out["boxes"].tolist() == [[20.0, 3.0, 28.0, 9.0]]
    assert torch.equal(out["masks"].bounding_boxes(), out["boxes"])


def test_semantic_targets_from_polygons_rasterise_at_the_stride():
    """Cell (i, j) is the label at pixel (i * s, j * s), as for bitmasks: the polygons rasterised on those
    pixels agree with the subsampled full-resolution masks but for pycocotools' vertex rounding (1/5 cell)."""
    rng = np.random.default_rng(1)
    height, width = 237, 251
    masks = PolygonMasks(_random_polygons(rng, 8, height, width), (height, width))
    labels = torch.arange(8)
    for stride in (1, 4, 8):
        size = (math.ceil(256 / stride), math.ceil(256 / stride))  # the padded batch
        ours = semantic_targets_from_instances([masks], [labels], size, stride)
        reference = semantic_targets_from_instances([masks.to_bitmasks()], [labels], size, stride)
        assert ours.shape == reference.shape == (1, *size)
        agreement = (ours == reference).float().mean().item()
        assert agreement == 1.0 if stride == 1 else agreement > 0.99, (stride, agreement)


# ----------------------------------------------------------------------------- the dataset and the model


def _polygon_coco(tmp_path, n=30, height=90, width=120, seed=0):
    rng = np.random.default_rng(seed)
    anns = []
    for i, inst in enumerate(_random_polygons(rng, n, height, width)):
        xy = np.array(inst[0]).reshape(-1, 2).clip([0, 0], [width, height])
        anns.append({"id": i + 1, "image_id": 1, "category_id": 3 if i % 2 else 7, "iscrowd": 0,
                     "segmentation": [xy.reshape(-1).tolist()],
                     "bbox": [float(xy[:, 0].min()), float(xy[:, 1].min()),
                              float(np.ptp(xy[:, 0])), float(np.ptp(xy[:, 1]))]})
    anns = [a for a in anns if a["bbox"][2] > 1 and a["bbox"][3] > 1]
    path = write_coco(tmp_path, [{"id": 1, "file_name": "im1.png", "height": height, "width": width}], anns)
    return path, tmp_path / "images", len(anns)


def test_dataset_keeps_polygons_unless_bitmasks_are_asked(tmp_path):
    path, image_dir, n = _polygon_coco(tmp_path)
    _, target = CocoInstanceDataset(path, image_dir)[0]
    assert isinstance(target["masks"], PolygonMasks) and len(target["masks"]) == n
    _, bitmask_target = CocoInstanceDataset(path, image_dir, mask_format="bitmask")[0]
    assert bitmask_target["masks"].shape == (n, 90, 120) and bitmask_target["masks"].dtype == torch.uint8
    assert torch.equal(target["masks"].to_bitmasks(), bitmask_target["masks"])
    with pytest.raises(ValueError, match="mask_format must be one of"):
        CocoInstanceDataset(path, image_dir, mask_format="rle")


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _build_targets_and_watch(tmp_path, monkeypatch, mask_format):
    """Build the training targets of a polygon image (dataset, crop and flip, the model's resize, the
    R x R mask targets, the semantic target); return (n, resized (H, W), the largest torch tensor and the
    largest array pycocotools decoded, in elements)."""
    import pycocotools.mask as mask_utils

    path, image_dir, n = _polygon_coco(tmp_path)
    transforms = Compose([RandomInstanceCrop("relative_range", (0.9, 0.9)), RandomHorizontalFlip(1.0)])
    dataset = CocoInstanceDataset(path, image_dir, transforms=transforms, mask_format=mask_format)
    model = blendmask_mobilenet_v2_fpn(num_classes=2, **{"input.min_size_train": (180,), "input.max_size_train": 400})
    model.train()
    decoded = [0]
    decode = mask_utils.decode

    def watched_decode(rles):
        out = decode(rles)
        decoded[0] = max(decoded[0], out.size)
        return out

    monkeypatch.setattr(mask_utils, "decode", watched_decode)
    torch.manual_seed(0)
    watch = _LargestTensor()
    with watch:
        image, target = dataset[0]
        batch, (resized,) = model.transform([image], [target])
        h, w = batch.image_sizes[0]
        targets = crop_and_resize_masks(resized["masks"], resized["boxes"], model.blender.output_size)
        semantic = semantic_targets_from_instances([resized["masks"]], [resized["labels"]],
                                                   (batch.tensors.shape[-2] // 8, batch.tensors.shape[-1] // 8), 8)
    assert targets.shape == (len(resized["labels"]), model.blender.output_size, model.blender.output_size)
    assert semantic.max() <= 2 and semantic.max() >= 1
    return len(resized["labels"]), (h, w), watch.largest, decoded[0]


def test_polygon_training_targets_hold_no_n_x_h_x_w_array(tmp_path, monkeypatch):
    """From the annotation file to the mask and semantic targets, polygon data never makes a tensor or a
    decoded array of n x H x W elements (nothing bigger than the image itself); the bitmask path does."""
    n, (h, w), largest, decoded = _build_targets_and_watch(tmp_path / "p", monkeypatch, "polygon")
    assert n >= 20
    assert largest <= 4 * h * w < n * h * w / 4, (largest, n, h, w)
    assert decoded <= 90 * 120, decoded  # one instance at the image's resolution at most (to_bitmasks: never)
    n, (h, w), largest, decoded = _build_targets_and_watch(tmp_path / "b", monkeypatch, "bitmask")
    assert largest >= n * h * w and decoded >= n * 81 * 108  # the same check fails on the bitmask path


def test_training_on_polygons_gives_the_losses_of_their_bitmasks():
    """The lite model's losses on polygon targets against the same instances as full-image bitmasks: the
    FCOS losses equal (same boxes), the mask and semantic losses close (in-box vs cropped rasterisation)."""
    rng = np.random.default_rng(3)
    height, width = 72, 96
    polygons = PolygonMasks(_random_polygons(rng, 6, height, width), (height, width))
    boxes = polygons.bounding_boxes()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = ((boxes[:, 2:] - boxes[:, :2]) > 2).all(1)
    polygons, boxes = polygons[keep], boxes[keep]
    labels = torch.arange(len(boxes)) % 2
    image = torch.rand(3, height, width)
    model = blendmask_mobilenet_v2_fpn(num_classes=2, **{"input.min_size_train": (144,), "input.max_size_train": 400})
    model.train()
    losses = {}
    for kind, masks in (("polygon", polygons), ("bitmask", polygons.to_bitmasks())):
        torch.manual_seed(0)
        losses[kind] = {k: v.item() for k, v in model([image], [{"boxes": boxes, "labels": labels, "masks": masks}]).items()}
    assert all(math.isfinite(v) for v in losses["polygon"].values())
    for key in ("loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"):
        assert losses["polygon"][key] == pytest.approx(losses["bitmask"][key], rel=1e-6), key
    assert losses["polygon"]["loss_mask"] == pytest.approx(losses["bitmask"]["loss_mask"], rel=0.05)
    assert losses["polygon"]["loss_basis_sem"] == pytest.approx(losses["bitmask"]["loss_basis_sem"], rel=0.02)


def test_bad_polygon_targets_are_refused_naming_the_problem():
    with pytest.raises(ValueError, match="instance 0 has a polygon of 4 coordinates"):
        PolygonMasks([[[0.0, 0.0, 4.0, 4.0]]], (8, 8))
    model = blendmask_mobilenet_v2_fpn(num_classes=2, **{"input.min_size_train": (64,), "input.max_size_train": 96})
    model.train()
    masks = PolygonMasks([[_square(2, 2, 10, 10)]], (32, 48))
    target = {"boxes": torch.tensor([[2.0, 2.0, 10.0, 10.0]]), "labels": torch.tensor([0]), "masks": masks}
    with pytest.raises(ValueError, match=r"targets\[0\]\['masks'\] must hold 1 instances of a \(32, 40\) image, got 1 of \(32, 48\)"):
        model([torch.rand(3, 32, 40)], [target])
    with pytest.raises(ValueError, match="expected boxes \\(1, 4\\)"):
        masks.crop_and_resize(torch.zeros(2, 4), 8)
