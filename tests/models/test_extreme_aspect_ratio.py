"""Images of extreme aspect ratio keep a side of at least one pixel after the resize, and run."""
import torch

from blendmask.config import get_config
from blendmask.models import build_model
from blendmask.models.transform import resized_size


def test_the_short_side_never_vanishes():
    assert resized_size(50, 20000, 800, 1333) == (3, 1333)
    assert resized_size(50, 20000, 64, 64) == (1, 64)
    assert resized_size(20000, 50, 64, 64) == (64, 1)


def test_usual_sizes_are_detectron2s():
    assert resized_size(480, 640, 800, 1333) == (800, 1067)
    assert resized_size(100, 3000, 800, 1333) == (44, 1333)


def test_a_20000_by_50_image_runs_through_the_model():
    torch.manual_seed(0)
    cfg = get_config("lite_mobilenet_v2", {"model.num_classes": 2, "input.min_size_test": 64,
                                            "input.max_size_test": 64})
    model = build_model(cfg, weights_backbone=None).eval()
    with torch.no_grad():
        for image in (torch.rand(3, 50, 20000), torch.rand(3, 20000, 50)):
            (out,) = model([image])
            assert out["boxes"].shape[1] == 4 and out["masks"].shape[-2:] == image.shape[-2:]
