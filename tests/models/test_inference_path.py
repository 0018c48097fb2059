"""The inference path (blendmask.models.optimize_for_inference): batch norms folded into their
convolutions, equal to the plain eager eval model within float tolerance, without touching the
training model or its checkpoints."""
import pytest
import torch
from torch import nn

from blendmask.config import get_config
from blendmask.models import build_model, optimize_for_inference
from blendmask.models.batchnorm_folding import fold_batchnorm, is_foldable_norm
from tests.helpers.paths import subprocess_env


def _tiny(size=64, max_size=96):
    return {"input.min_size_train": (size,), "input.max_size_train": max_size,
            "input.min_size_test": size, "input.max_size_test": max_size}


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial statistics and affines in every norm (fresh ones are the identity, which
    would make any fold look right)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if is_foldable_norm(m) or isinstance(m, nn.GroupNorm):
                c = m.weight.shape[0]
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                if hasattr(m, "running_mean") and m.running_mean is not None:
                    m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(c, generator=g))


def _model(preset, **overrides):
    torch.manual_seed(0)
    model = build_model(get_config(preset, {**_tiny(), **overrides}))
    _randomise_norms(model)
    model.eval()
    model.proposal_generator.score_thresh = 0.0
    model.proposal_generator.post_nms_topk = 5
    return model


def _count_norms(model):
    return sum(is_foldable_norm(m) for m in model.modules())


def _assert_close(a, b, what, rtol=1e-4, atol=1e-4):
    scale = max(float(b.abs().max()), 1.0)
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert a.shape == b.shape, what
    assert err <= atol * scale + rtol, f"{what}: max abs error {err:g} (scale {scale:g})"


# preset, overrides, foldable norms expected to remain after folding
CASES = [
    ("lite_mobilenet_v2", {}, 0),  # torchvision MobileNetV2 (FrozenBN) + basis BN
    ("R_50_1x", {}, 0),  # MSRA ResNet ConvNorm (FrozenBN)
    ("R_50_1x", {"model.backbone.layout": "torchvision"}, 0),  # torchvision ResNet named pairs + downsample
    ("R_50_1x", {"model.backbone.deform_on_per_stage": (False, False, True, True),
                 "model.backbone.deform_modulated": True}, 0),  # DeformConvNorm
    ("DLA_34_syncbn_4x", {}, 0),  # DLA blocks/roots/projections (BN backbone)
    ("RT_R_50_4x_bn-head_syncbn_shtw", {}, None),  # BN backbone; FCOS towers with one BN per level stay
    ("R_50_1x", {"model.basis.module": "deeplabv3plus"}, 0),  # DeepLabV3+ bottom, ASPP pooling branch
]


@pytest.mark.parametrize("preset, overrides, remaining", CASES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_folded_model_equals_eager_eval(preset, overrides, remaining, channels_last):
    model = _model(preset, **overrides)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = _count_norms(model)
    folded = optimize_for_inference(model, channels_last=channels_last)
    assert folded.folded_batchnorms > 0
    if remaining is None:  # per-level FCOS BNs cannot be folded: one shared conv feeds one BN per level
        remaining = sum(is_foldable_norm(m) for n, m in model.named_modules() if "fcos_head" in n)
        assert remaining > 0
    assert _count_norms(folded) == remaining
    assert folded.folded_batchnorms == norms - remaining
    # the original is untouched: same keys, same values, still trainable
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    model.train()
    model.eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        feats_ref, head_ref = model._heads(x)
        feats, head = folded._heads(x)
        first = feats[next(iter(feats))]
        assert first.is_contiguous(memory_format=torch.channels_last) == channels_last
        for name in feats_ref:
            _assert_close(feats[name], feats_ref[name], f"feature {name}")
        for field in head_ref._fields:
            for level, (a, b) in enumerate(zip(getattr(head, field), getattr(head_ref, field))):
                _assert_close(a, b, f"{field}[{level}]")
        (det_ref,) = model.detect(x, [(64, 96)])
        (det,) = folded.detect(x, [(64, 96)])
        images = [torch.rand(3, 60, 80, generator=torch.Generator().manual_seed(1))]
        (ref,) = model(images)
        (out,) = folded(images)
    assert torch.equal(det["labels"], det_ref["labels"])
    for key in ("boxes", "scores", "masks", "attns", "bases"):  # masks: (n, R, R) in their boxes
        _assert_close(det[key], det_ref[key], f"detect {key}")
    assert torch.equal(out["labels"], ref["labels"])
    for key in ("boxes", "scores"):
        _assert_close(out[key], ref[key], key)
    # Pasted masks: the random model's boxes are ~1 px wide, so a float32 rounding of 1e-5 px in a box
    # moves the R = 56 mask by R / width ~ 56 times that (measured 4e-4; float64 folding is exact, 1e-13).
    _assert_close(out["masks"], ref["masks"], "pasted masks", rtol=2e-3, atol=0.0)


def test_folded_model_refuses_training_and_folds_a_copy():
    model = _model("lite_mobilenet_v2")
    folded = fold_batchnorm(model)
    assert folded is not model and folded.inference_only and not hasattr(model, "inference_only")
    with pytest.raises(RuntimeError, match="folded for inference"):
        folded.train()
    assert not any(p.requires_grad for p in folded.parameters())
    assert any(p.requires_grad for p in model.parameters())
    assert fold_batchnorm(model, inplace=True) is model


def test_weights_round_trip_through_the_unfolded_model(tmp_path):
    """Checkpoints keep their keys: a Predictor folds its own copy, the model it got still saves and loads."""
    from blendmask.predict import Predictor

    model = _model("lite_mobilenet_v2")
    keys = set(model.state_dict())
    predictor = Predictor(model=model, class_names=["a", "b", "c"], score_threshold=0.0)
    assert predictor.model.inference_only and predictor.model is not model
    assert set(model.state_dict()) == keys
    fresh = _model("lite_mobilenet_v2")
    fresh.load_state_dict(model.state_dict())  # strict: same keys


def test_fold_rejects_a_non_module():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        fold_batchnorm("model")


# ----------------------------------------------------------------------------- --compile

def test_compiled_model_equals_eager_and_reports_compile_time_apart():
    from blendmask.models.inference_path import compile_report, compiled_stages

    model = _model("lite_mobilenet_v2")
    compiled = optimize_for_inference(model, compile=True)
    images = [torch.rand(3, 60, 80, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        (ref,) = model(images)
        (first,) = compiled(images)
        (second,) = compiled(images)
    stages = compiled_stages(compiled)
    assert [s.name for s in stages] == ["backbone", "head"]
    assert all(len(s.compile_seconds) == 1 and len(s.run_seconds) == 1 for s in stages)
    assert not stages[0].state.failed
    report = compile_report(compiled)
    assert "compiling took" in report and "backbone steady state" in report and "head steady state" in report
    for out in (first, second):
        assert torch.equal(out["labels"], ref["labels"])
        for key in ("boxes", "scores"):
            _assert_close(out[key], ref[key], key)
        _assert_close(out["masks"], ref["masks"], "pasted masks", rtol=2e-3, atol=0.0)


def _tiny_weights_and_image(tmp_path):
    from PIL import Image

    model = _model("lite_mobilenet_v2")
    cfg = get_config("lite_mobilenet_v2", _tiny())
    weights = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, weights)
    image = tmp_path / "img.png"
    pixels = (torch.rand(60, 80, 3, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(image)
    return weights, image


def test_predict_compile_without_a_cxx_compiler_falls_back_with_one_warning(tmp_path):
    """No working C++ compiler (CXX=/nonexistent, caches off so that nothing compiled earlier is
    reused): ``blendmask predict --compile`` predicts eagerly, with one warning and no traceback."""
    import json
    import subprocess
    import sys

    weights, image = _tiny_weights_and_image(tmp_path)
    env = subprocess_env(OMP_NUM_THREADS="1", CXX="/nonexistent",
                         TORCHINDUCTOR_FX_GRAPH_CACHE="0", TORCHINDUCTOR_AUTOGRAD_CACHE="0",
                         TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "blendmask", "predict", str(image), "--weights", str(weights),
                           "--out", str(out), "--score-threshold", "0.0", "--compile"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warnings) == 1 and "cannot compile" in warnings[0] and "running it eagerly" in warnings[0], proc.stderr
    assert "ran eagerly" in proc.stdout
    assert json.loads((out / "predictions.json").read_text())["images"][0]["file"] == str(image)


def test_eval_compile_without_a_cxx_compiler_falls_back_with_one_warning(tmp_path):
    """``blendmask eval --compile`` where inductor cannot compile: evaluates eagerly, one warning, no traceback."""
    import subprocess
    import sys

    from blendmask.cli import main

    data = tmp_path / "shapes"
    assert main(["make-shapes", str(data), "--train", "1", "--val", "2", "--size", "64", "--seed", "1"]) == 0
    torch.manual_seed(0)
    cfg = get_config("lite_mobilenet_v2", {**_tiny(), "model.num_classes": 4})  # the shapes set's 4 classes
    weights = tmp_path / "tiny.pth"
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.to_dict()}, weights)
    env = subprocess_env(OMP_NUM_THREADS="1", CXX="/nonexistent",
                         TORCHINDUCTOR_FX_GRAPH_CACHE="0", TORCHINDUCTOR_AUTOGRAD_CACHE="0",
                         TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "blendmask", "eval", "--weights", str(weights), "--data", str(data),
                           "--output", str(out), "--compile"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warnings) == 1 and "cannot compile" in warnings[0], proc.stderr
    assert "ran eagerly" in proc.stdout and (out / "metrics.json").is_file()
