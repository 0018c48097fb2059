"""predict streams its inputs, accepts directories (naming what it skipped) and has a default --out."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import blendmask.predict as predict_module
from blendmask.cli import main
from blendmask.config import get_config
from blendmask.models import build_model


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict_weights")
    torch.manual_seed(0)
    cfg = get_config("lite_mobilenet_v2", {"model.num_classes": 2, "input.min_size_test": 64,
                                            "input.max_size_test": 64})
    model = build_model(cfg, weights_backbone=None)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "class_names": ["a", "b"]}, folder / "w.pth")
    return folder / "w.pth"


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "nested").mkdir()
    return folder


def test_a_directory_is_predicted_and_skipped_files_are_named(weights, image_dir, capsys):
    assert main(["predict", str(image_dir), "--weights", str(weights)]) == 0
    out = weights.parent / "predictions"
    results = json.loads((out / "predictions.json").read_text())
    assert [Path(r["file"]).name for r in results["images"]] == ["img0.png", "img1.png", "img2.png"]
    err = capsys.readouterr().err
    assert f"predict: skipped 1 file(s) that are not images: {image_dir / 'notes.txt'}" in err
    assert "predict: 100%" in err  # the progress bar


def test_images_are_read_one_at_a_time(weights, image_dir, tmp_path, monkeypatch):
    events = []
    real_read, real_call = predict_module.read_image, predict_module.Predictor.__call__

    def read(path, **kwargs):
        events.append("read")
        return real_read(path, **kwargs)

    def call(self, image, **kwargs):
        events.append("predict")
        return real_call(self, image, **kwargs)

    monkeypatch.setattr(predict_module, "read_image", read)
    monkeypatch.setattr(predict_module.Predictor, "__call__", call)
    assert main(["predict", str(image_dir), "--weights", str(weights), "--out", str(tmp_path / "p")]) == 0
    assert events == ["read", "predict"] * 3


def test_a_file_that_is_not_an_image_fails_before_any_work(weights, image_dir, tmp_path, capsys):
    bad = image_dir / "notes.txt"
    assert main(["predict", str(image_dir / "img0.png"), str(bad), "--weights", str(weights),
                 "--out", str(tmp_path / "p")]) == 1
    assert f"cannot read image {str(bad)!r}" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
