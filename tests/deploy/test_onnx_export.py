"""ONNX export of the whole inference graph: onnxruntime parity with the eager model, dynamic
image sizes, an empty-detection image, the CLI and bad input."""
from __future__ import annotations

import onnx
import pytest
import torch

from blendmask.cli import main as cli_main
from blendmask.deploy import MIN_OPSET, InferenceGraph, OnnxPredictor, export_onnx
from blendmask.deploy.onnx_export import TRANSFORM_METADATA_KEY

from tests.helpers.deploy import (
    POST_NMS_TOPK,
    assert_same_detections,
    eager_single,
    max_score,
    sample_images,
    small_lite_config,
    small_lite_model,
)

CLI_OVERRIDES = ["model.num_classes=3", "input.min_size_test=128", "input.max_size_test=192",
                 f"model.fcos.post_nms_topk={POST_NMS_TOPK}"]


@pytest.fixture(scope="module")
def images():
    return sample_images()


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """Low threshold: every image has many detections. Exported through the CLI from a weights file."""
    cfg = small_lite_config()
    model = small_lite_model(cfg)
    directory = tmp_path_factory.mktemp("onnx_many")
    weights = directory / "weights.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, weights)
    path = directory / "model.onnx"
    overrides = CLI_OVERRIDES + [f"model.fcos.inference_th={cfg.model.fcos.inference_th}"]
    code = cli_main(["export-onnx", "--config", "lite_mobilenet_v2", "--weights", str(weights), "--out", str(path),
                     "--set", *overrides])
    assert code == 0
    return model, path, OnnxPredictor(path)


@pytest.fixture(scope="module")
def sparse(tmp_path_factory, images):
    """Threshold between the two lowest per-image maximum scores: the weakest image has no
    detection and every other image some. Exported with the Python API from the model."""
    base_model = small_lite_model(small_lite_config())
    peaks = sorted((max_score(base_model, image), name) for name, image in images.items())
    (low, empty_name), (second, _) = peaks[0], peaks[1]
    assert second - low > 1e-3, f"no score gap between the test images to place a threshold in: {peaks}"
    model = small_lite_model(small_lite_config(score_thresh=(low + second) / 2))
    path = export_onnx(model, tmp_path_factory.mktemp("onnx_sparse") / "model.onnx")
    return model, path, OnnxPredictor(path), empty_name


def test_graph_is_standard_onnx(many):
    _, path, _ = many
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    ops = {node.op_type for node in graph.graph.node}
    assert {"NonMaxSuppression", "RoiAlign", "Resize", "Softmax", "Mul", "ReduceSum", "TopK"} <= ops
    assert all(node.domain in ("", "ai.onnx") for node in graph.graph.node), "non-standard op domain"
    roi_align = [node for node in graph.graph.node if node.op_type == "RoiAlign"]
    modes = {a.s for node in roi_align for a in node.attribute if a.name == "coordinate_transformation_mode"}
    assert modes == {b"half_pixel"}
    assert TRANSFORM_METADATA_KEY in {p.key for p in graph.metadata_props}


def test_parity_many_detections(many, images):
    model, _, predictor = many
    names = ["noise", "shapes", "checker"]
    got = predictor([images[n] for n in names])
    expected = eager_single(model, [images[n] for n in names])
    for name, g, e in zip(names, got, expected):
        assert e["boxes"].shape[0] == POST_NMS_TOPK, f"{name}: expected a full set of detections"
        assert_same_detections(g, e)


def test_parity_with_an_empty_image(sparse, images):
    model, _, predictor, empty_name = sparse
    names = list(images)
    got = predictor([images[n] for n in names])
    expected = eager_single(model, [images[n] for n in names])
    counts = {}
    for name, g, e in zip(names, got, expected):
        assert_same_detections(g, e)
        counts[name] = g["boxes"].shape[0]
    assert counts[empty_name] == 0, counts
    assert all(c > 0 for n, c in counts.items() if n != empty_name), counts
    empty = got[names.index(empty_name)]
    h, w = images[empty_name].shape[-2:]
    assert empty["masks"].shape == (0, 1, h, w) and empty["boxes"].shape == (0, 4)


def test_dynamic_image_sizes(many):
    """One export runs at padded sizes it was not traced with and matches the eager graph."""
    model, _, predictor = many
    graph = InferenceGraph(model, reference_blender=True)
    g = torch.Generator().manual_seed(2)
    for padded, size in [((96, 224), (90, 210)), ((192, 128), (192, 100))]:
        x = torch.randn(1, 3, *padded, generator=g)
        image_size = torch.tensor(size)
        got = predictor.run_raw(x, image_size)
        with torch.no_grad():
            expected = graph(x, image_size)
        assert got[0].shape[0] > 0
        for a, b in zip(got, expected):
            assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(got[0], expected[0], atol=1e-3, rtol=0)
        torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=1e-5)
        assert torch.equal(got[2], expected[2])
        torch.testing.assert_close(got[3], expected[3], atol=1e-4, rtol=0)


def test_predictor_rejects_bad_images(many):
    _, _, predictor = many
    with pytest.raises(TypeError, match="list"):
        predictor(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        predictor([torch.rand(1, 64, 64)])


def test_unknown_config_name(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown config name 'no_such_model'"):
        export_onnx("no_such_model", tmp_path / "m.onnx")
    assert cli_main(["export-onnx", "--config", "no_such_model", "--out", str(tmp_path / "m.onnx")]) == 1
    assert "unknown config name 'no_such_model'" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_missing_weights_file(tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        export_onnx("lite_mobilenet_v2", tmp_path / "m.onnx", weights=missing)
    code = cli_main(["export-onnx", "--config", "lite_mobilenet_v2", "--weights", str(missing),
                     "--out", str(tmp_path / "m.onnx")])
    assert code == 1
    assert "weights file not found" in capsys.readouterr().err


@pytest.mark.parametrize("opset", [11, 15, MIN_OPSET - 1])
def test_opset_too_old(tmp_path, opset, capsys):
    with pytest.raises(ValueError, match=f"opset {opset} is too old"):
        export_onnx("lite_mobilenet_v2", tmp_path / "m.onnx", opset=opset)
    code = cli_main(["export-onnx", "--config", "lite_mobilenet_v2", "--opset", str(opset),
                     "--out", str(tmp_path / "m.onnx")])
    assert code == 1
    err = capsys.readouterr().err
    assert f"opset {opset} is too old" in err
    if opset < 16:
        assert "RoiAlign" in err and "half_pixel" in err


def test_sigmoid_one_basis_model_exports_with_sigmoid_ops(tmp_path, images):
    """normalize='sigmoid' (K = 1) goes through blend_reference's Sigmoid ops; onnxruntime matches eager."""
    cfg = small_lite_config()
    cfg.model.basis.num_bases = 1
    cfg.model.blender.normalize = "sigmoid"
    model = small_lite_model(cfg)
    path = export_onnx(model, tmp_path / "sigmoid.onnx")
    graph = onnx.load(str(path))
    ops = {node.op_type for node in graph.graph.node}
    assert "Sigmoid" in ops and "RoiAlign" in ops
    names = ["shapes"]
    got = OnnxPredictor(path)([images[n] for n in names])
    expected = eager_single(model, [images[n] for n in names])
    for g, e in zip(got, expected):
        assert e["boxes"].shape[0] > 0
        assert_same_detections(g, e)


def test_nearest_bottom_sampling_export_is_refused(tmp_path):
    cfg = small_lite_config()
    cfg.model.blender.bottom_interp = "nearest"
    with pytest.raises(ValueError, match="bottom_interp='nearest' is not supported.*bottom_interp='bilinear'"):
        export_onnx(cfg, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_assembler_model_exports_and_matches_eager(tmp_path, images):
    """merge='assembler' (no top layer, constant one-hot attentions) exports; onnxruntime matches eager."""
    cfg = small_lite_config()
    cfg.model.blender.merge = "assembler"
    cfg.model.basis.num_bases = 16
    cfg.model.blender.attn_size = 4
    cfg.model.blender.top_interp = "nearest"
    cfg.model.blender.bottom_resolution = 28
    model = small_lite_model(cfg)
    assert model.top_layer is None
    path = export_onnx(model, tmp_path / "assembler.onnx")
    names = ["shapes", "noise"]
    got = OnnxPredictor(path)([images[n] for n in names])
    expected = eager_single(model, [images[n] for n in names])
    for g, e in zip(got, expected):
        assert e["boxes"].shape[0] > 0
        assert_same_detections(g, e)
