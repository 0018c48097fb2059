"""torch.export of the inference path with the fused blender kept as ``blendmask::blend``."""
from __future__ import annotations

import os

import pytest
import torch

from blendmask import _extension
from blendmask.deploy import InferenceGraph, export_program, postprocess_detections

from tests.helpers.deploy import assert_same_detections, eager_single, sample_images, small_lite_config, small_lite_model

if not _extension.extension_loaded():
    if os.environ.get("CI", "").lower() == "true":
        raise RuntimeError(f"CI=true but the compiled blender extension is not loaded: {_extension.load_error()}")
    pytest.skip(f"the compiled blender extension is not built ({_extension.load_error()})", allow_module_level=True)


@pytest.fixture(scope="module")
def exported():
    model = small_lite_model(small_lite_config())
    return model, export_program(model)


def _targets(program) -> set:
    return {node.target for node in program.graph.nodes if node.op == "call_function"}


def test_fused_op_kept_in_graph(exported):
    _, program = exported
    targets = _targets(program)
    assert torch.ops.blendmask.blend.default in targets
    assert torch.ops.torchvision.roi_align.default not in targets, "the reference blender was traced instead"
    assert torch.ops.torchvision.nms.default in targets


def test_program_matches_eager_at_two_sizes(exported):
    model, program = exported
    module = program.module()
    graph = InferenceGraph(model, reference_blender=False)
    g = torch.Generator().manual_seed(3)
    for padded, size in [((128, 160), (128, 150)), ((96, 224), (90, 224))]:
        x = torch.randn(1, 3, *padded, generator=g)
        image_size = torch.tensor(size)
        with torch.no_grad():
            got, expected = module(x, image_size), graph(x, image_size)
        assert got[0].shape[0] > 0
        for a, b in zip(got, expected):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_round_trip_matches_model_output(exported, tmp_path):
    """Saved, loaded and post-processed, the program gives the model's eval output."""
    model, program = exported
    path = tmp_path / "blendmask.pt2"
    torch.export.save(program, path)
    module = torch.export.load(path).module()
    images = list(sample_images().values())
    expected = eager_single(model, images)
    for image, e in zip(images, expected):
        batch, _ = model.transform([image])
        size = batch.image_sizes[0]
        with torch.no_grad():
            raw = module(batch.tensors, torch.tensor(size))
        got = postprocess_detections(*raw, image_size=size, original_size=tuple(image.shape[-2:]))
        assert_same_detections(got, e, box_atol=1e-4)
