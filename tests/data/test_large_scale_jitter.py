"""Large-scale jitter: output sizes, resize range, crop/pad placement, masks and boxes aligned with the image."""
from __future__ import annotations

import pytest
import torch

from blendmask.data.jitter import LargeScaleJitter, resize_crop_pad, resize_sample
from blendmask.data.transforms import mask_boxes
from blendmask.polygons import PolygonMasks

BLOCK = (0.9, 0.2, 0.6)  # the colour of the hand-made instance


def _block_sample(height=40, width=60, rows=(10, 30), cols=(20, 45), polygon=False):
    """An image that is black except a coloured rectangle, the one instance's mask."""
    image = torch.zeros(3, height, width)
    image[:, rows[0]:rows[1], cols[0]:cols[1]] = torch.tensor(BLOCK)[:, None, None]
    if polygon:
        x0, x1, y0, y1 = cols[0], cols[1], rows[0], rows[1]
        masks = PolygonMasks([[[x0, y0, x1, y0, x1, y1, x0, y1]]], (height, width))
    else:
        masks = torch.zeros(1, height, width, dtype=torch.uint8)
        masks[0, rows[0]:rows[1], cols[0]:cols[1]] = 1
    target = {"boxes": torch.tensor([[cols[0], rows[0], cols[1], rows[1]]], dtype=torch.float32),
              "labels": torch.tensor([2]), "masks": masks, "image_id": 5}
    return image, target


def _erode(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood is all in ``mask`` (H, W) bool."""
    padded = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1))
    return torch.nn.functional.max_pool2d(1 - padded, 3, stride=1)[0, 0] == 0


@pytest.mark.parametrize("polygon", [False, True])
def test_output_always_has_the_output_size_and_masks_follow_the_image(polygon):
    jitter = LargeScaleJitter(output_size=(32, 48), scale_range=(0.1, 2.0))
    seen_pad = seen_crop = False
    for seed in range(30):
        torch.manual_seed(seed)
        image, target = jitter(*_block_sample(polygon=polygon))
        assert image.shape == (3, 32, 48)
        masks = target["masks"].to_bitmasks() if polygon else target["masks"]
        assert masks.shape[1:] == (32, 48) and target["labels"].tolist() == [2] * len(masks)
        if len(masks) == 0:
            continue
        mask = masks[0].bool()
        colour = torch.tensor(BLOCK)[:, None]
        inner = _erode(mask)
        # away from the blurred edge, the instance's pixels have its colour and the others are black
        assert torch.allclose(image[:, inner], colour.expand(3, int(inner.sum())), atol=1e-4)
        background = _erode(_erode(~mask))  # pixels at least 2 away from the instance
        assert image[:, background].abs().max().item() <= 1e-4
        tight = mask_boxes(masks[:1].to(torch.uint8))[0]
        if polygon:  # the extent of the clipped vertices: within a pixel of the rasterised mask's box
            assert (target["boxes"][0] - tight).abs().max().item() <= 1.0
        else:
            assert torch.equal(target["boxes"][0], tight)
        seen_pad |= bool((image[:, -1, :] == 0).all() and (image[:, :, -1] == 0).all())
        seen_crop |= bool(mask.sum() > 25 * 20)
    assert seen_pad and seen_crop  # both regimes were exercised


def test_resized_size_spans_the_scale_range_of_the_output_size():
    jitter = LargeScaleJitter(output_size=(100, 200), scale_range=(0.1, 2.0))
    assert jitter.resized_size(50, 50, 1.0) == (100, 100)  # limited by the output height
    assert jitter.resized_size(50, 50, 0.1) == (10, 10)
    assert jitter.resized_size(50, 50, 2.0) == (200, 200)
    assert jitter.resized_size(10, 100, 1.0) == (20, 200)  # limited by the output width


def test_crop_origin_is_uniform_inside_the_resized_image():
    jitter = LargeScaleJitter(output_size=(20, 20), scale_range=(2.0, 2.0))  # 40x60 -> 27x40: always cropped
    image, target = _block_sample()
    origins = set()
    for seed in range(40):
        torch.manual_seed(seed)
        out, _ = jitter(image, target)
        assert out.shape == (3, 20, 20)
        torch.manual_seed(seed)
        torch.rand((), dtype=torch.float64)
        y0, x0 = int(torch.randint(0, 27 - 20 + 1, ())), int(torch.randint(0, 40 - 20 + 1, ()))
        origins.add((y0, x0))
        resized, _ = resize_sample(image, target, (27, 40))
        assert torch.equal(out, resized[:, y0:y0 + 20, x0:x0 + 20])
    assert len(origins) > 10


def test_bitmask_resize_round_trip_is_exact():
    image, target = _block_sample(rows=(7, 23), cols=(3, 50))
    up_image, up = resize_sample(image, target, (80, 120))
    assert torch.equal(up["boxes"], torch.tensor([[6.0, 14.0, 100.0, 46.0]]))
    back_image, back = resize_sample(up_image, up, (40, 60))
    assert torch.equal(back["masks"], target["masks"])
    assert torch.equal(back["boxes"], target["boxes"])
    block = target["masks"][0].bool()
    away_from_edges = _erode(block) | _erode(~block)  # the bilinear resizes blur the block's edge
    assert torch.allclose(back_image[:, away_from_edges], image[:, away_from_edges], atol=1e-4)


def test_polygons_and_bitmasks_give_the_same_boxes_and_masks():
    torch.manual_seed(0)
    for seed in range(10):
        outputs = []
        for polygon in (False, True):
            torch.manual_seed(seed)
            outputs.append(LargeScaleJitter((32, 48), (0.3, 1.8))(*_block_sample(polygon=polygon)))
        (_, bitmask), (_, poly) = outputs
        assert len(bitmask["labels"]) == len(poly["labels"])
        if len(poly["labels"]):
            assert torch.allclose(bitmask["boxes"], poly["boxes"], atol=1.0)
            raster = poly["masks"].to_bitmasks()
            union = (raster | bitmask["masks"]).sum()
            assert (raster & bitmask["masks"]).sum() / union > 0.9


def test_instance_cut_away_by_the_crop_is_dropped():
    image, target = _block_sample(rows=(0, 10), cols=(0, 10))
    out, cut = resize_crop_pad(image, target, (40, 60), 30, 20, (20, 30))  # window misses the block
    assert out.shape == (3, 20, 30) and len(cut["labels"]) == 0 and cut["masks"].shape == (0, 20, 30)
    assert cut["boxes"].shape == (0, 4)


def test_boxes_without_masks_are_scaled_shifted_and_clipped():
    image = torch.zeros(3, 10, 20)
    target = {"boxes": torch.tensor([[2.0, 1.0, 12.0, 9.0]]), "labels": torch.tensor([0])}
    _, out = resize_crop_pad(image, target, (20, 40), 10, 4, (8, 100))
    assert torch.equal(out["boxes"], torch.tensor([[0.0, 0.0, 14.0, 8.0]]))


@pytest.mark.parametrize("kwargs, match", [
    ({"output_size": (0, 10)}, "output_size"),
    ({"scale_range": (2.0, 1.0)}, "scale_range"),
    ({"scale_range": (0.0, 1.0)}, "scale_range"),
])
def test_bad_arguments_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LargeScaleJitter(**kwargs)


def test_unknown_target_keys_are_refused():
    image, target = _block_sample()
    target["sem_seg"] = torch.zeros(40, 60)
    with pytest.raises(ValueError, match="sem_seg"):
        LargeScaleJitter((32, 32))(image, target)


def test_config_turns_the_jitter_on_between_crop_and_flip():
    from blendmask.config import BlendMaskConfig
    from blendmask.data.transforms import RandomHorizontalFlip, RandomInstanceCrop, build_train_transforms

    cfg = BlendMaskConfig.from_dict({"input": {"crop_enabled": True, "lsj": {"enabled": True, "output_size": [64, 96],
                                                                              "scale_range": [0.5, 1.5]}}})
    assert BlendMaskConfig.from_dict(cfg.to_dict()) == cfg
    kinds = [type(t) for t in build_train_transforms(cfg.input).transforms]
    assert kinds == [RandomInstanceCrop, LargeScaleJitter, RandomHorizontalFlip]
    jitter = build_train_transforms(cfg.input).transforms[1]
    assert jitter.output_size == (64, 96) and jitter.scale_range == (0.5, 1.5)
    assert LargeScaleJitter not in [type(t) for t in build_train_transforms(BlendMaskConfig().input).transforms]
    with pytest.raises(ValueError, match="input.lsj"):
        BlendMaskConfig.from_dict({"input": {"lsj": {"size": [1, 2]}}})
