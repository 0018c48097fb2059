"""AdelaiDet's panoptic BlendMask checkpoints: P2 in the FPN and the ``panoptic_module`` (SemSegFPNHead) keys."""
import pytest
import torch

from blendmask.config import get_config
from blendmask.convert import ConversionError, convert_checkpoint, from_adelaidet, match_state_dict
from blendmask.models import load_model_from_weights
from blendmask.models import PanopticBlendMask, build_model

from tests.helpers.adelaidet_weights import adelaidet_state_dict


def adelaidet_panoptic_state_dict(*, num_semantic: int = 54, conv_dims: int = 128, seed: int = 1):
    """AdelaiDet's panoptic BlendMask R-50 state dict, written from detectron2's SemSegFPNHead source:
    per level p2..p5, ``max(1, log2(stride / 4))`` [Conv2d(bias=False, norm=GN) (+ Upsample)] blocks
    (the conv at even indices), a 1x1 ``predictor``; AdelaiDet's attribute ``panoptic_module``; the
    FPN with ``fpn_lateral2``/``fpn_output2`` on res2 (256 channels)."""
    gen = torch.Generator().manual_seed(seed)
    sd = adelaidet_state_dict()
    sd["backbone.fpn_lateral2.weight"] = 0.01 * torch.randn(256, 256, 1, 1, generator=gen)
    sd["backbone.fpn_lateral2.bias"] = 0.01 * torch.randn(256, generator=gen)
    sd["backbone.fpn_output2.weight"] = 0.01 * torch.randn(256, 256, 3, 3, generator=gen)
    sd["backbone.fpn_output2.bias"] = 0.01 * torch.randn(256, generator=gen)
    for level, convs in (("p2", 1), ("p3", 1), ("p4", 2), ("p5", 3)):
        for k in range(convs):
            index = 2 * k if level != "p2" else 0
            prefix = f"panoptic_module.{level}.{index}."
            sd[prefix + "weight"] = 0.01 * torch.randn(conv_dims, 256 if k == 0 else conv_dims, 3, 3, generator=gen)
            sd[prefix + "norm.weight"] = 1 + 0.1 * torch.randn(conv_dims, generator=gen)
            sd[prefix + "norm.bias"] = 0.1 * torch.randn(conv_dims, generator=gen)
    sd["panoptic_module.predictor.weight"] = 0.01 * torch.randn(num_semantic, conv_dims, 1, 1, generator=gen)
    sd["panoptic_module.predictor.bias"] = 0.01 * torch.randn(num_semantic, generator=gen)
    return sd


@pytest.fixture(scope="module")
def panoptic_sd():
    return adelaidet_panoptic_state_dict()


def test_panoptic_checkpoint_converts_loads_strictly_and_rebuilds(tmp_path, panoptic_sd):
    out = tmp_path / "panoptic.pth"
    report = convert_checkpoint(_save(tmp_path, panoptic_sd), out, "Panoptic_R_50_1x")
    assert report.ok
    assert ("panoptic_module.predictor.weight", "sem_seg_head.predictor.weight") in report.renamed
    model, cfg = load_model_from_weights(out)
    assert isinstance(model, PanopticBlendMask) and cfg.model.panoptic.num_stuff_classes == 53
    torch.testing.assert_close(model.state_dict()["sem_seg_head.p5.4.norm.weight"],
                               panoptic_sd["panoptic_module.p5.4.norm.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.state_dict()["backbone.fpn_output2.weight"],
                               panoptic_sd["backbone.fpn_output2.weight"], rtol=0, atol=0)


def _save(tmp_path, sd):
    path = tmp_path / "adelaidet_panoptic.pth"
    torch.save({"model": sd, "iteration": 89999}, path)
    return path


def test_panoptic_and_instance_checkpoints_refuse_the_other_config(tmp_path, panoptic_sd):
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(_save(tmp_path, panoptic_sd), tmp_path / "x.pth", "R_50_1x")
    message = str(info.value)
    assert "UNEXPECTED in checkpoint" in message and "sem_seg_head.p2.0.weight" in message
    assert "semantic (panoptic) branch is present, but the config's model has absent" in message
    assert "FPN levels is P2-P7, but the config's model has P3-P7" in message
    assert not (tmp_path / "x.pth").exists()
    model = build_model(get_config("Panoptic_R_50_1x"))
    matched, report = match_state_dict(from_adelaidet(adelaidet_state_dict()), model.state_dict())
    assert not report.ok and any(k.startswith("sem_seg_head.") for k in report.missing)
