"""The SAHI adapter: BlendMask as a SAHI ``DetectionModel`` in ``get_sliced_prediction``, and a
clear error where SAHI is not installed."""
from __future__ import annotations

import importlib
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from blendmask.data import ImageReading


def test_without_sahi_the_adapter_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sahi", None)  # as if not installed
    for name in [m for m in sys.modules if m.startswith("sahi.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "blendmask.integrations.sahi", raising=False)
    with pytest.raises(ImportError, match=r"needs the optional dependency 'sahi': pip install 'blendmask\[sahi\]'"):
        importlib.import_module("blendmask.integrations.sahi")


class SquarePredictor:
    """A perfect predictor of flat-coloured squares on black: each colour of an image is one
    detection, label 1, its mask the colour's pixels (probabilities 0 or 1)."""

    def __init__(self):
        self.class_names = ["background-free", "square"]
        self.reading = ImageReading()
        self.batches = []

    def predict_batch(self, images, *, mask_format):
        assert mask_format == "probs"
        self.batches.append([tuple(i.shape) for i in images])
        results = []
        for image in images:
            codes = (image * 255).round().to(torch.int64)
            codes = codes[0] * 65536 + codes[1] * 256 + codes[2]
            found = [c for c in torch.unique(codes).tolist() if c != 0]
            masks = [codes == c for c in found]
            boxes = []
            for m in masks:
                ys, xs = torch.nonzero(m, as_tuple=True)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            results.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                            "labels": torch.ones(len(found), dtype=torch.int64),
                            "scores": torch.linspace(0.9, 0.8, len(found)) if found else torch.zeros(0),
                            "masks": torch.stack(masks)[:, None].float() if found else torch.zeros((0, 1) + codes.shape)})
        return results


def test_sliced_prediction_through_sahi_finds_each_square_once_in_place():
    from sahi.predict import get_sliced_prediction

    from blendmask.integrations.sahi import BlendMaskDetectionModel

    image = np.zeros((160, 240, 3), dtype=np.uint8)
    squares = {(20, 30): (200, 10, 10), (100, 170): (10, 200, 10), (60, 100): (10, 10, 200)}  # (y, x): colour
    for (y, x), colour in squares.items():
        image[y:y + 12, x:x + 12] = colour
    predictor = SquarePredictor()
    model = BlendMaskDetectionModel(model=predictor, confidence_threshold=0.5, device="cpu")
    result = get_sliced_prediction(image, model, slice_height=80, slice_width=80, overlap_height_ratio=0.25,
                                   overlap_width_ratio=0.25, perform_standard_pred=False, batch_size=3, verbose=0)
    assert len(predictor.batches) > 1 and max(len(b) for b in predictor.batches) == 3  # batches of slices
    found = sorted((p.bbox.to_xyxy(), p.category.id, p.category.name) for p in result.object_prediction_list)
    # SAHI takes a masked prediction's box from its polygon (pixel indices: the last one inclusive)
    assert found == sorted(([x, y, x + 11, y + 11], 1, "square") for y, x in squares)
    for prediction in result.object_prediction_list:
        x0, y0, x1, y1 = (int(v) for v in prediction.bbox.to_xyxy())
        mask = prediction.mask.bool_mask
        assert mask.shape == image.shape[:2] and mask.sum() == 144 and mask[y0:y1 + 1, x0:x1 + 1].all()


def test_a_weights_file_predicts_through_sahi(tmp_path):
    from sahi.predict import get_sliced_prediction

    from blendmask.config import get_config
    from blendmask.integrations.sahi import BlendMaskDetectionModel
    from blendmask.models import build_model

    cfg = get_config("lite_mobilenet_v2", {"model.num_classes": 3, "input.min_size_test": 64, "input.max_size_test": 64,
                                           "model.fcos.inference_th": 0.01})
    torch.manual_seed(0)
    net = build_model(cfg, weights_backbone=None)
    with torch.no_grad():
        net.proposal_generator.fcos_head.cls_logits.weight.mul_(10.0)
    torch.save({"model": net.state_dict(), "config": cfg.to_dict(), "class_names": ["a", "b", "c"]}, tmp_path / "m.pth")
    model = BlendMaskDetectionModel(model_path=str(tmp_path / "m.pth"), confidence_threshold=0.05, device="cpu")
    assert model.category_mapping == {"0": "a", "1": "b", "2": "c"} and model.has_mask and model.num_categories == 3
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    result = get_sliced_prediction(image, model, slice_height=64, slice_width=64, perform_standard_pred=False, verbose=0)
    assert result.object_prediction_list
    for prediction in result.object_prediction_list:
        x0, y0, x1, y1 = prediction.bbox.to_xyxy()
        assert 0 <= x0 < x1 <= 150 and 0 <= y0 < y1 <= 100 and prediction.score.value >= 0.05
        assert prediction.category.name == "abc"[prediction.category.id]
