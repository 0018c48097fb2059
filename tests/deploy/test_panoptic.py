"""Panoptic deployment: the graph gives the semantic logits, the fusion runs in Python post-processing."""
import pytest
import torch

from blendmask.config import get_config
from blendmask.deploy.panoptic import (OnnxPanopticPredictor, PanopticInferenceGraph, export_panoptic_onnx,
                                       panoptic_postprocess)
from blendmask.models import build_model

CFG = {"model.num_classes": 3, "model.panoptic.num_stuff_classes": 2, "input.min_size_test": 96,
       "input.max_size_test": 128, "model.fcos.inference_th": 0.05, "model.fcos.post_nms_topk": 20,
       "model.panoptic.stuff_area_limit": 32, "model.panoptic.instances_score_thresh": 0.0}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = build_model(get_config("lite_mobilenet_v2_panoptic", CFG)).eval()
    with torch.no_grad():  # confident masks and semantic logits, so binarisation is stable
        [m for m in model.basis_module.tower.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight.mul_(30.0)
        model.sem_seg_head.predictor.weight.mul_(30.0)
    return model


def _same_panoptic(a, b):
    assert torch.equal(a["panoptic_seg"], b["panoptic_seg"])
    assert [(s["id"], s["isthing"], s["category_id"]) for s in a["segments_info"]] == \
        [(s["id"], s["isthing"], s["category_id"]) for s in b["segments_info"]]


def _run_graph(model, image):
    batch, _ = model.transform([image])
    size = batch.image_sizes[0]
    with torch.no_grad():
        outputs = PanopticInferenceGraph(model, reference_blender=True)(batch.tensors,
                                                                        torch.tensor(size, dtype=torch.int64))
        return panoptic_postprocess(model, outputs, image_size=size, original_size=tuple(image.shape[-2:]))


def test_graph_outputs_plus_python_fusion_equal_the_eager_model(model):
    torch.manual_seed(1)
    image = torch.rand(3, 90, 120)
    with torch.no_grad():
        eager = model([image])[0]
    assert eager["segments_info"], "the test model should produce segments"
    _same_panoptic(_run_graph(model, image), eager)


def test_the_graph_refuses_an_instance_model():
    plain = build_model(get_config("lite_mobilenet_v2", {"model.num_classes": 2}))
    with pytest.raises(TypeError, match="PanopticBlendMask"):
        PanopticInferenceGraph(plain, reference_blender=True)


@pytest.mark.slow
def test_onnx_graph_with_python_fusion_matches_the_eager_model(model, tmp_path):
    path = export_panoptic_onnx(model, tmp_path / "panoptic.onnx")
    predictor = OnnxPanopticPredictor(path, model)
    torch.manual_seed(2)
    for image in (torch.rand(3, 90, 120), torch.rand(3, 128, 96)):
        with torch.no_grad():
            eager = model([image])[0]
        _same_panoptic(predictor([image])[0], eager)
