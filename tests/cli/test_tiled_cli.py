"""``blendmask predict --tile`` and ``blendmask eval --tile --max-dets``: the wiring and its refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from blendmask.cli import main
from blendmask.config import get_config
from blendmask.data import make_shapes
from blendmask.models import build_model


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    cfg = get_config("lite_mobilenet_v2", {"model.num_classes": 4, "input.min_size_test": 64,
                                           "input.max_size_test": 64, "model.fcos.inference_th": 0.01})
    torch.manual_seed(0)
    model = build_model(cfg, weights_backbone=None)
    with torch.no_grad():
        model.proposal_generator.fcos_head.cls_logits.weight.mul_(10.0)
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, path)
    return path


def test_predict_in_tiles_writes_whole_image_results(weights, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (150, 230, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "big.png"), "--weights", str(weights), "--out", str(out),
                 "--tile", "auto", "--tile-overlap", "0.25", "--score-threshold", "0.0"]) == 0
    results = json.loads((out / "predictions.json").read_text())
    record = results["images"][0]
    assert results["tile"] == "auto" and results["tile_overlap"] == 0.25 and record["tiles"] == 3 * 5
    assert record["instances"] and all(i["segmentation"]["size"] == [150, 230] for i in record["instances"])
    width, height = Image.open(out / "big_pred.png").size
    assert height >= 150 and width >= 230  # the image, and a legend where labels found no room


@pytest.mark.parametrize("options, needle", [(["--tile", "16"], "tile must be an integer >= the model's largest stride"),
                                             (["--tile", "64", "--tile-overlap", "1.5"], "overlap must be a fraction"),
                                             (["--tile", "64", "--show-bases"], "--show-bases"),
                                             (["--max-image-pixels", "100"], "input.max_image_pixels")])
def test_predict_refuses_bad_tile_options_in_one_line(weights, tmp_path, capsys, options, needle):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--weights", str(weights), "--out", str(tmp_path / "o")] + options) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_eval_in_tiles_reports_max_dets(weights, tmp_path, capsys):
    data = make_shapes(tmp_path / "shapes", train=0, val=2, size=96, seed=2)
    assert main(["eval", "--weights", str(weights), "--data", str(data), "--output", str(tmp_path / "eval"),
                 "--tile", "64", "--max-dets", "300"]) == 0
    out = capsys.readouterr().out
    assert "COCOeval maxDets 300" in out and "segm" in out
