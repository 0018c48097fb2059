"""The config's image-reading rules (intensity policy, page, channels, pixel limit) reach every
reader: the training and evaluation data sets, the predictor of a weights file, the exported ONNX file."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from blendmask.config import get_config
from blendmask.data import ImageReading, make_shapes
from blendmask.engine.defaults import load_dataset
from blendmask.models import build_model
from blendmask.predict import Predictor, predict_files

OVERRIDES = {"model.num_classes": 4, "input.min_size_test": 64, "input.max_size_test": 64,
             "input.intensity": "window", "input.intensity_window": [0, 4095], "input.image_channels": [1]}


@pytest.fixture(scope="module")
def cfg():
    return get_config("lite_mobilenet_v2", OVERRIDES)


@pytest.fixture(scope="module")
def weights(cfg, tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": build_model(cfg, weights_backbone=None).state_dict(), "config": cfg.to_dict()}, path)
    return path


def test_training_and_evaluation_sets_read_by_the_config(cfg, tmp_path):
    data = make_shapes(tmp_path / "shapes", train=2, val=2, size=64)
    expected = ImageReading.from_config(cfg.input)
    assert expected.intensity.mode == "window" and expected.channels == (1,)
    assert load_dataset(str(data), "train", input_cfg=cfg.input, augment=True).reading == expected
    assert load_dataset(str(data), "val", input_cfg=cfg.input).reading == expected
    assert load_dataset(str(data), "val").reading == ImageReading()


def test_the_predictor_of_a_weights_file_reads_by_its_config(cfg, weights, tmp_path):
    predictor = Predictor.from_weights(weights)
    assert predictor.reading == ImageReading.from_config(cfg.input)
    assert Predictor.from_weights(weights, max_image_pixels=123).reading.max_pixels == 123
    frame = np.zeros((40, 48, 3), np.uint16)
    frame[..., 1] = 4095  # channel 1 full under the 0..4095 window; channels 0 and 2 empty
    import tifffile

    tifffile.imwrite(tmp_path / "frame.tif", frame, photometric="rgb")
    files = predict_files(predictor, [tmp_path / "frame.tif"], tmp_path / "out")
    overlay = np.asarray(Image.open(files.overlays[0]).convert("RGB"))
    assert overlay.shape[0] == 40 and overlay.shape[1] >= 48  # (+ a legend strip where labels found no room)
    if len(json.loads(files.results_json.read_text())["images"][0]["instances"]) == 0:
        assert overlay[:, :48].min() > 200  # white: channel 1 shown as gray at 1.0
    small = Predictor.from_weights(weights, max_image_pixels=100)
    with pytest.raises(ValueError, match=r"frame\.tif.*input.max_image_pixels"):
        predict_files(small, [tmp_path / "frame.tif"], tmp_path / "out2")


def test_the_exported_model_records_the_reading(cfg, tmp_path):
    pytest.importorskip("onnxruntime")
    from blendmask.deploy import export_onnx
    from blendmask.deploy.predictor import OnnxPredictor

    with pytest.warns(UserWarning, match="randomly initialised"):
        path = export_onnx(cfg, tmp_path / "model.onnx")
    assert OnnxPredictor(path).reading == ImageReading.from_config(cfg.input)
