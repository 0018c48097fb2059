"""The native-resolution random window for training on large images: ``RandomInstanceCrop`` with
``crop_type="absolute"`` (``input.crop_type: absolute``, ``input.crop_size`` in pixels)."""
from __future__ import annotations

import pytest
import torch

from blendmask.config import get_config
from blendmask.data.transforms import RandomInstanceCrop, build_train_transforms


def _coded_image(height, width):
    """Pixel (y, x) holds y * width + x in every channel, so a crop tells where it came from."""
    return (torch.arange(height * width, dtype=torch.float64).reshape(height, width) / (height * width)).expand(3, -1, -1)


def test_an_absolute_window_is_cut_at_native_resolution_around_an_instance():
    height, width = 300, 500
    image = _coded_image(height, width)
    masks = torch.zeros((2, height, width), dtype=torch.uint8)
    masks[0, 40:60, 70:95] = 1
    masks[1, 250:290, 420:470] = 1
    target = {"boxes": torch.tensor([[70.0, 40, 95, 60], [420.0, 250, 470, 290]]), "labels": torch.tensor([1, 2]),
              "masks": masks}
    crop = RandomInstanceCrop("absolute", (64, 96))
    torch.manual_seed(0)
    for _ in range(20):
        window, out = crop(image, dict(target))
        assert window.shape == (3, 64, 96)  # native pixels: no resize
        code = int(round(float(window[0, 0, 0]) * height * width))
        y0, x0 = divmod(code, width)
        assert torch.equal(window, image[:, y0:y0 + 64, x0:x0 + 96])
        kept = [k for k in range(2) if masks[k, y0:y0 + 64, x0:x0 + 96].any()]
        assert out["labels"].tolist() == [k + 1 for k in kept] and len(kept) >= 1  # the window holds an instance
        for row, k in enumerate(kept):
            assert torch.equal(out["masks"][row], masks[k, y0:y0 + 64, x0:x0 + 96])


def test_a_window_larger_than_the_image_is_the_image():
    image = _coded_image(40, 50)
    target = {"boxes": torch.tensor([[5.0, 5, 15, 15]]), "labels": torch.tensor([0])}
    window, out = RandomInstanceCrop("absolute", (64, 64))(image, dict(target))
    assert torch.equal(window, image) and torch.equal(out["boxes"], target["boxes"])


@pytest.mark.parametrize("size", [(0.5, 64), (0, 64), (64, 64.5), (64,)])
def test_an_absolute_size_must_be_whole_pixels(size):
    with pytest.raises(ValueError, match="'absolute' crop_size must be two whole numbers of pixels"):
        RandomInstanceCrop("absolute", size)


def test_the_config_selects_the_window_for_training():
    cfg = get_config("lite_mobilenet_v2", {"input.crop_enabled": True, "input.crop_type": "absolute",
                                           "input.crop_size": (256, 256)})
    crop = build_train_transforms(cfg.input).transforms[0]
    assert isinstance(crop, RandomInstanceCrop) and crop.crop_type == "absolute" and crop.crop_size == (256.0, 256.0)
