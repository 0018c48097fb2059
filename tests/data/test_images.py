"""The image reader: every mode and bit depth scaled by its real range; bad files fail with the file named."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from blendmask.data import CocoInstanceDataset, ImageReading, IntensityPolicy, read_image

from tests.helpers.coco_files import write_coco

H, W = 30, 40
RANGE = ImageReading(intensity=IntensityPolicy(mode="range"))  # the container's range (the default is percentile)


def _blob(low=100, high=4000):
    """A 16-bit microscopy-like frame: a dim background with one bright Gaussian blob."""
    yy, xx = np.mgrid[0:H, 0:W]
    blob = np.exp(-((yy - 12) ** 2 + (xx - 25) ** 2) / (2 * 4.0 ** 2))
    return (low + (high - low) * blob).astype(np.uint16)


def _gray(tensor):
    assert tensor.shape == (3, H, W) and tensor.dtype == torch.float32
    assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[0], tensor[2])
    return tensor[0].numpy()


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_16_bit_microscopy_image_keeps_its_content(tmp_path, suffix):
    pixels = _blob()
    path = tmp_path / f"cell.{suffix}"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode == "I;16"
    gray = _gray(read_image(path, reading=RANGE))
    np.testing.assert_array_equal(gray, pixels.astype(np.float32) / 65535)
    assert gray.max() < 0.07  # 4000 / 65535: not saturated to 1.0 as Pillow's convert("RGB") does
    assert gray[12, 25] > 10 * gray[0, 0]  # the blob stands out from the background
    assert (gray > 0.5 * gray.max()).sum() < 0.2 * gray.size  # and stays a blob


def test_16_bit_big_endian_and_32_bit_int_tiff(tmp_path):
    pixels = _blob()
    Image.fromarray(pixels.astype(">u2")).save(tmp_path / "be.tif")
    assert Image.open(tmp_path / "be.tif").mode == "I;16B"
    np.testing.assert_array_equal(_gray(read_image(tmp_path / "be.tif", reading=RANGE)), pixels / np.float32(65535))
    Image.fromarray(pixels.astype(np.int32)).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    np.testing.assert_array_equal(_gray(read_image(tmp_path / "i32.tif", reading=RANGE)), pixels / np.float32(65535))
    wide = pixels.astype(np.int32) * 1000 - 50_000  # beyond 16 bits and negative: min-max
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    gray = _gray(read_image(tmp_path / "wide.tif", reading=RANGE))
    assert gray.min() == 0.0 and gray.max() == 1.0
    np.testing.assert_allclose(gray, (wide - wide.min()) / (wide.max() - wide.min()), atol=1e-6)


def test_float_tiff(tmp_path):
    unit = (_blob() / 4000.0).astype(np.float32)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    assert Image.open(tmp_path / "unit.tif").mode == "F"
    np.testing.assert_array_equal(_gray(read_image(tmp_path / "unit.tif", reading=RANGE)), unit)  # in [0, 1]: as is
    Image.fromarray(unit * 300 - 7).save(tmp_path / "wide.tif")
    gray = _gray(read_image(tmp_path / "wide.tif", reading=RANGE))
    np.testing.assert_allclose(gray, (unit - unit.min()) / (unit.max() - unit.min()), atol=1e-6)
    bad = unit.copy()
    bad[3, 4] = np.nan
    Image.fromarray(bad).save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match="nan.tif.*NaN or infinite"):
        read_image(tmp_path / "nan.tif")


def test_8_bit_modes(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert torch.equal(read_image(tmp_path / "rgba.png"), torch.from_numpy(rgba[..., :3]).permute(2, 0, 1) / 255.0)
    Image.fromarray(rgba[..., :2], "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(_gray(read_image(tmp_path / "la.png")), rgba[..., 0] / np.float32(255))
    palette = Image.fromarray(rgba[..., :3], "RGB").quantize(16)
    palette.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    expected = np.asarray(palette.convert("RGB")).transpose(2, 0, 1) / np.float32(255)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png").numpy(), expected)
    bits = rgba[..., 0] > 127
    Image.fromarray(bits).save(tmp_path / "one.png")
    assert Image.open(tmp_path / "one.png").mode == "1"
    np.testing.assert_array_equal(_gray(read_image(tmp_path / "one.png")), bits.astype(np.float32))
    Image.fromarray(rgba, "CMYK").save(tmp_path / "cmyk.jpg")
    image = read_image(tmp_path / "cmyk.jpg")
    assert image.shape == (3, H, W) and 0 <= image.min() and image.max() <= 1


def _png_header_only(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_bad_files_fail_with_the_file_named(tmp_path):
    Image.fromarray(_blob()).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    for name, needle in (("cut.png", "truncated"), ("empty.png", "cannot identify"), ("bomb.png", "decompression bomb")):
        with pytest.raises(ValueError) as info:
            read_image(tmp_path / name)
        message = str(info.value)
        assert name in message and needle in message and "\n" not in message
    with pytest.raises(FileNotFoundError, match="gone.png"):
        read_image(tmp_path / "gone.png")
    with pytest.raises(ValueError, match="is 40x30 but 31x30 was expected"):
        read_image(tmp_path / "full.png", expected_size=(31, 30))
    with pytest.raises(ValueError, match="is 40x30 after EXIF orientation but 30x40 was expected"):
        read_image(tmp_path / "full.png", expected_size=(30, 40))


def test_dataset_reads_16_bit_images_through_the_same_reader(tmp_path):
    pixels = _blob()
    path = write_coco(tmp_path, [{"id": 1, "file_name": "cell.png", "height": H, "width": W}], [], write_images=False)
    (tmp_path / "images").mkdir()
    Image.fromarray(pixels).save(tmp_path / "images" / "cell.png")
    image, _ = CocoInstanceDataset(path, tmp_path / "images", reading=RANGE)[0]
    np.testing.assert_array_equal(_gray(image), pixels / np.float32(65535))
