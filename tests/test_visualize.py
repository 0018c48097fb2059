"""Drawing: instance overlays, bases/attention figures, loss curves."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from blendmask.visualize import draw_bases_and_attentions, draw_instances, instance_colours, plot_curves

H, W = 60, 80


def _result(scores=(0.9, 0.8, 0.1)):
    masks = torch.zeros(3, 1, H, W)
    masks[0, 0, 10:30, 5:25] = 0.9
    masks[1, 0, 30:55, 40:75] = 0.7
    masks[2, 0, 35:55, 5:25] = 0.95
    return {
        "boxes": torch.tensor([[5.0, 10, 25, 30], [40.0, 30, 75, 55], [5.0, 35, 25, 55]]),
        "labels": torch.tensor([0, 1, 0]),
        "scores": torch.tensor(scores),
        "masks": masks,
    }


def test_draw_instances_colours_each_instance_and_respects_the_threshold():
    image = torch.full((3, H, W), 0.5)
    out = draw_instances(image, _result(), ["circle", "square"], score_threshold=0.3)
    assert isinstance(out, Image.Image) and out.size[1] == H and out.size[0] >= W and out.mode == "RGB"  # + a legend
    pixels = np.asarray(out).astype(int)
    grey = np.array([128, 128, 128])
    first, second, dropped = pixels[20, 15], pixels[45, 60], pixels[48, 15]
    assert np.abs(first - grey).sum() > 30 and np.abs(second - grey).sum() > 30
    assert np.abs(first - second).sum() > 30  # distinct colours
    assert np.array_equal(dropped, grey)  # score 0.1 < 0.3: not drawn
    assert np.array_equal(pixels[58, 32], grey)  # background untouched


def test_draw_instances_accepts_pil_and_ground_truth_without_scores():
    image = Image.new("RGB", (W, H), (10, 20, 30))
    result = _result()
    del result["scores"]
    result["masks"] = result["masks"][:, 0] > 0.5  # (n, H, W) binary
    pixels = np.asarray(draw_instances(image, result, ["circle", "square"])).astype(int)
    assert not np.array_equal(pixels[48, 15], [10, 20, 30])  # no scores: everything drawn


def test_draw_instances_rejects_bad_input():
    image = torch.zeros(3, H, W)
    result = _result()
    result["masks"] = result["masks"][..., :-1]
    with pytest.raises(ValueError, match="masks must be"):
        draw_instances(image, result, ["a", "b"])
    with pytest.raises(ValueError, match="labels must be in"):
        draw_instances(image, _result(), ["only one"])
    with pytest.raises(ValueError, match="image must be"):
        draw_instances(torch.zeros(H, W), _result(), ["a", "b"])


def test_instance_colours_are_distinct():
    colours = instance_colours(12)
    assert len(set(colours)) == 12


def test_bases_and_attentions_picture():
    torch.manual_seed(0)
    bases, attns = torch.randn(4, 32, 40), torch.randn(6, 4, 7, 7)
    two = draw_bases_and_attentions(bases, attns, max_instances=2)
    four = draw_bases_and_attentions(bases, attns, max_instances=4, instance_titles=[f"i{i}" for i in range(6)])
    assert two.mode == "RGB" and four.size[0] == two.size[0] and four.size[1] > two.size[1]
    assert np.asarray(four).std() > 10  # not blank
    none = draw_bases_and_attentions(bases, attns[:0])  # no instances: bases only
    assert none.size[1] < two.size[1]
    with pytest.raises(ValueError, match="attns must be"):
        draw_bases_and_attentions(bases, torch.randn(2, 3, 7, 7))
    with pytest.raises(ValueError, match="bases must be"):
        draw_bases_and_attentions(bases[0], attns)


def test_plot_curves_from_records_and_jsonl(tmp_path):
    records = [{"iteration": i, "loss": 2.0 / (i + 1), "lr": 0.01} for i in range(20)] + [{"iteration": 20, "eval": 1}]
    out = plot_curves(records, tmp_path / "a" / "curves.png", ["loss", "lr"])
    assert Image.open(out).size[0] > 100
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert Image.open(plot_curves(path, tmp_path / "b.png", ["loss"])).size[0] > 100
    with pytest.raises(ValueError, match="no record"):
        plot_curves(records, tmp_path / "c.png", ["missing"])
    path.write_text('{"iteration": 1}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        plot_curves(path, tmp_path / "d.png", ["loss"])
    with pytest.raises(FileNotFoundError):
        plot_curves(tmp_path / "nope.jsonl", tmp_path / "e.png", ["loss"])
