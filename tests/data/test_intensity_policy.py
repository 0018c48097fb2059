"""The intensity policy of images deeper than 8 bits, multi-page/multi-channel TIFF, and how bad
files are refused: 8-, 12-in-16-, 16-bit and float images under each policy."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from blendmask.config import BlendMaskConfig, get_config
from blendmask.data import ImageReading, IntensityPolicy, decode_image, read_image
from blendmask.data.intensity import intensity_bounds

H, W = 24, 32
POLICIES = {
    "range": IntensityPolicy(mode="range"),
    "percentile": IntensityPolicy(mode="percentile", percentiles=(2.0, 98.0)),
    "window": IntensityPolicy(mode="window", window=(100.0, 3000.0)),
}


def _reading(name: str, **kwargs) -> ImageReading:
    return ImageReading(intensity=POLICIES[name], **kwargs)


def _frame(high: int, dtype=np.uint16, seed: int = 0) -> np.ndarray:
    """A noisy gradient with one bright spot, values in ``[0, high]``."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.05, 0.8, W)[None, :] * np.ones((H, 1))
    values = ramp * high + rng.normal(0, 0.02 * high, (H, W))
    values[5:8, 10:13] = high
    return np.clip(values, 0, high).astype(dtype)


def _gray(tensor: torch.Tensor) -> np.ndarray:
    assert tensor.shape == (3, H, W) and tensor.dtype == torch.float32
    assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[0], tensor[2])
    return tensor[0].numpy()


def _expected(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((values.astype(np.float64) - low) / (high - low), 0, 1)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_8_bit_images_are_divided_by_255_under_every_policy(tmp_path, policy):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.tif")
    old_rule = torch.from_numpy(np.asarray(Image.open(tmp_path / "rgb.png").convert("RGB"), dtype=np.float32) / 255.0)
    assert torch.equal(read_image(tmp_path / "rgb.png", reading=_reading(policy)), old_rule.permute(2, 0, 1))
    assert torch.equal(read_image(tmp_path / "rgb.tif", reading=_reading(policy)), old_rule.permute(2, 0, 1))
    np.testing.assert_array_equal(_gray(read_image(tmp_path / "gray.png", reading=_reading(policy))),
                                  rgb[..., 0].astype(np.float32) / 255.0)


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_12_bit_content_in_a_16_bit_container(tmp_path, suffix):
    pixels = _frame(4095)
    path = tmp_path / f"cells.{suffix}"
    Image.fromarray(pixels).save(path)
    ranged = _gray(read_image(path, reading=_reading("range")))
    np.testing.assert_array_equal(ranged, pixels.astype(np.float32) / 65535)
    assert ranged.max() <= 4095 / 65535 + 1e-7  # the old rule: a dark image
    low, high = np.percentile(pixels, (2.0, 98.0))
    stretched = _gray(read_image(path, reading=_reading("percentile")))
    np.testing.assert_allclose(stretched, _expected(pixels, low, high), atol=1e-6)
    assert stretched.min() == 0.0 and stretched.max() == 1.0 and stretched.std() > 0.2
    windowed = _gray(read_image(path, reading=_reading("window")))
    np.testing.assert_allclose(windowed, _expected(pixels, 100, 3000), atol=1e-6)
    default = _gray(read_image(path))  # the default policy gives 12-bit content its full contrast
    low, high = np.percentile(pixels, (1.0, 99.8))
    np.testing.assert_allclose(default, _expected(pixels, low, high), atol=1e-6)


def test_full_16_bit_and_32_bit_int_images(tmp_path):
    pixels = _frame(65535)
    Image.fromarray(pixels).save(tmp_path / "full.tif")
    np.testing.assert_array_equal(_gray(read_image(tmp_path / "full.tif", reading=_reading("range"))),
                                  pixels.astype(np.float32) / 65535)
    low, high = np.percentile(pixels, (2.0, 98.0))
    np.testing.assert_allclose(_gray(read_image(tmp_path / "full.tif", reading=_reading("percentile"))),
                               _expected(pixels, low, high), atol=1e-6)
    np.testing.assert_allclose(_gray(read_image(tmp_path / "full.tif", reading=_reading("window"))),
                               _expected(pixels, 100, 3000), atol=1e-6)
    wide = pixels.astype(np.int32) * 3 - 70_000
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    np.testing.assert_allclose(_gray(read_image(tmp_path / "wide.tif", reading=_reading("range"))),
                               _expected(wide, wide.min(), wide.max()), atol=1e-6)
    low, high = np.percentile(wide, (2.0, 98.0))
    np.testing.assert_allclose(_gray(read_image(tmp_path / "wide.tif", reading=_reading("percentile"))),
                               _expected(wide, low, high), atol=1e-6)


def test_float_images_under_each_policy_and_nan_refused(tmp_path):
    unit = _frame(4095).astype(np.float32) / 4095
    tifffile.imwrite(tmp_path / "unit.tif", unit)
    np.testing.assert_array_equal(_gray(read_image(tmp_path / "unit.tif", reading=_reading("range"))), unit)
    low, high = np.percentile(unit, (2.0, 98.0))
    np.testing.assert_allclose(_gray(read_image(tmp_path / "unit.tif", reading=_reading("percentile"))),
                               _expected(unit, low, high), atol=1e-6)
    np.testing.assert_array_equal(_gray(read_image(tmp_path / "unit.tif", reading=_reading("window"))),
                                  np.zeros((H, W), np.float32))  # every value is below the window's low 100
    tifffile.imwrite(tmp_path / "wide.tif", unit.astype(np.float64) * 5000)
    np.testing.assert_allclose(_gray(read_image(tmp_path / "wide.tif", reading=_reading("window"))),
                               _expected(unit * 5000, 100, 3000), atol=1e-6)
    bad = unit.copy()
    bad[2, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad)
    for policy in POLICIES:
        with pytest.raises(ValueError, match=r"nan\.tif.*NaN or infinite") as info:
            read_image(tmp_path / "nan.tif", reading=_reading(policy))
        assert "\n" not in str(info.value)


def test_16_bit_percentiles_equal_numpys():
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 65536, (37, 23, 3)).astype(np.uint16)
    pixels[:5] = 7  # ties
    for q in ((0.0, 100.0), (1.0, 99.8), (13.7, 50.0), (33.3, 66.6)):
        got = intensity_bounds(pixels, IntensityPolicy(mode="percentile", percentiles=q))
        np.testing.assert_allclose(got, np.percentile(pixels, q), rtol=0, atol=1e-9)


def test_a_tile_of_a_decoded_image_keeps_the_whole_images_scale(tmp_path):
    pixels = _frame(4095)
    Image.fromarray(pixels).save(tmp_path / "cells.png")
    decoded = decode_image(tmp_path / "cells.png")
    assert decoded.pixels.dtype == np.uint16 and decoded.pixels.shape == (H, W, 1)
    whole = decoded.to_tensor()
    assert torch.equal(decoded.to_tensor(4, 20, 8, 30), whole[:, 4:20, 8:30])


def test_multi_page_multi_channel_tiff(tmp_path):
    pages = [_frame(4095, seed=s) for s in range(3)]
    tifffile.imwrite(tmp_path / "stack.tif", np.stack(pages), photometric="minisblack")  # 3 gray pages
    for page in range(3):
        got = _gray(read_image(tmp_path / "stack.tif", reading=_reading("range", page=page)))
        np.testing.assert_array_equal(got, pages[page].astype(np.float32) / 65535)
    channels = np.stack([_frame(4095, seed=s) for s in range(5)], axis=-1)  # (H, W, 5)
    tifffile.imwrite(tmp_path / "five.tif", channels, photometric="minisblack", planarconfig="contig")
    got = _gray(read_image(tmp_path / "five.tif", reading=_reading("range", channels=(3,))))
    np.testing.assert_array_equal(got, channels[..., 3].astype(np.float32) / 65535)
    rgb = read_image(tmp_path / "five.tif", reading=_reading("range", channels=(4, 0, 2)))
    np.testing.assert_array_equal(rgb.numpy(), channels[..., [4, 0, 2]].transpose(2, 0, 1).astype(np.float32) / 65535)
    tifffile.imwrite(tmp_path / "planar.tif", channels.transpose(2, 0, 1)[:3], photometric="rgb", planarconfig="separate")
    planar = read_image(tmp_path / "planar.tif", reading=_reading("range"))
    np.testing.assert_array_equal(planar.numpy(), channels[..., :3].transpose(2, 0, 1).astype(np.float32) / 65535)
    for reading, needle in ((_reading("range", page=3), r"has 3 page\(s\): input.image_page=3 does not exist"),
                            (_reading("range", channels=(5,)), r"has 5 channel\(s\).*channel 5, which does not exist"),
                            (_reading("range"), r"has 5 channels: choose 1 or 3 of them with input.image_channels")):
        path = tmp_path / ("stack.tif" if reading.page else "five.tif")
        with pytest.raises(ValueError, match=needle) as info:
            read_image(path, reading=reading)
        assert path.name in str(info.value) and "\n" not in str(info.value)


def _write_header_only_tiff(path, width, height):
    """A small TIFF whose header claims ``width x height`` pixels."""
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        for name, value in (("ImageWidth", width), ("ImageLength", height)):
            tag = tags[name]
            data[tag.valueoffset:tag.valueoffset + 4] = int(value).to_bytes(4, "little")
            data[tag.offset + 2:tag.offset + 4] = (4).to_bytes(2, "little")  # type LONG
    path.write_bytes(bytes(data))


def test_corrupt_and_truncated_tiff_and_pixel_limit(tmp_path):
    tifffile.imwrite(tmp_path / "ok.tif", _frame(4095))
    data = (tmp_path / "ok.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.tif").write_bytes(data[:8] + b"\xff" * 64)
    for name in ("cut.tif", "junk.tif"):
        with pytest.raises(ValueError) as info:
            read_image(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)
    for name in ("ok.tif",):
        with pytest.raises(ValueError, match=r"ok\.tif.*24 = 768 pixels, over the limit of 700.*input.max_image_pixels"):
            read_image(tmp_path / name, reading=ImageReading(max_pixels=700))
        assert read_image(tmp_path / name, reading=ImageReading(max_pixels=768)).shape == (3, H, W)
    _write_header_only_tiff(tmp_path / "bomb.tif", 40000, 40000)
    with pytest.raises(ValueError, match=r"bomb\.tif.*decompression bomb guard\): raise input.max_image_pixels"):
        read_image(tmp_path / "bomb.tif")


def test_the_config_carries_the_policy_and_refuses_bad_values():
    cfg = get_config("lite_mobilenet_v2", {"input.intensity": "window", "input.intensity_window": [10, 4000],
                                           "input.image_channels": [2], "input.image_page": 1,
                                           "input.max_image_pixels": 10**9})
    reading = ImageReading.from_config(cfg.input)
    assert reading == ImageReading(intensity=IntensityPolicy(mode="window", window=(10.0, 4000.0)), page=1,
                                   channels=(2,), max_pixels=10**9)
    assert ImageReading.from_dict(reading.to_dict()) == reading
    assert ImageReading.from_config(BlendMaskConfig.from_dict(cfg.to_dict()).input) == reading
    with pytest.raises(ValueError, match="input.intensity' must be one of"):
        get_config("lite_mobilenet_v2", {"input.intensity": "auto"})
    for overrides, needle in (({"input.intensity_percentiles": [50, 10]}, "input.intensity_percentiles"),
                              ({"input.intensity_window": [5, 5]}, "input.intensity_window"),
                              ({"input.image_channels": [0, 1]}, "input.image_channels"),
                              ({"input.image_page": -1}, "input.image_page")):
        with pytest.raises(ValueError, match=needle):
            ImageReading.from_config(get_config("lite_mobilenet_v2", overrides).input)
