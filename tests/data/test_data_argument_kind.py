"""``--data`` that is an image (or any file that is not JSON) is refused saying what is expected."""
import numpy as np
import pytest
from PIL import Image

from blendmask.data import resolve_split
from blendmask.data.panoptic import detect_format


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    return path


def test_an_image_as_data_is_refused_saying_what_is_expected(png):
    for read in (detect_format, lambda p: resolve_split(p, "val")):
        with pytest.raises(ValueError) as error:
            read(png)
        assert "is not a COCO JSON file" in str(error.value) and "a data directory" in str(error.value)


def test_the_commands_data_loader_refuses_it_before_reading(png):
    from blendmask.engine.defaults import load_dataset

    with pytest.raises(ValueError, match=r"--data .*image.png' is not a COCO JSON file .*: --data expects a data directory"):
        load_dataset(str(png), "val")


def test_a_json_with_a_byte_order_mark_and_spaces_is_accepted(tmp_path):
    path = tmp_path / "set.json"
    path.write_bytes(b"\xef\xbb\xbf \n{\"images\": [], \"annotations\": [], \"categories\": []}")
    assert detect_format(path) == "instances"
