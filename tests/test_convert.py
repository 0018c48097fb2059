"""AdelaiDet checkpoint conversion against the real assembled model (strict loads, round trip, errors)."""
import pickle

import numpy as np
import pytest
import torch

from blendmask.config import get_config
from blendmask.convert import (ConversionError, convert_checkpoint, convert_state_dict, from_adelaidet,
                               match_state_dict)
from blendmask.models import build_model, load_weights

from tests.helpers.adelaidet_weights import adelaidet_state_dict

SHARED_TOWER = dict(top_levels=1, num_cls_convs=0, num_box_convs=0, num_share_convs=3, basis_num_convs=2)


@pytest.fixture(scope="module")
def r50_model():
    return build_model(get_config("R_50_1x"))


@pytest.fixture(scope="module")
def rt_model():
    return build_model(get_config("RT_R_50_4x"))


@pytest.fixture(scope="module")
def r50_adelaidet():
    return adelaidet_state_dict()


def _assert_same_values(ours, theirs):
    for key, value in ours.items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, theirs[key], rtol=0, atol=0, msg=key)


def test_r50_checkpoint_converts_and_loads_strictly(r50_model, r50_adelaidet):
    checkpoint = {"model": {**r50_adelaidet, "pixel_mean": torch.zeros(3, 1, 1), "pixel_std": torch.ones(3, 1, 1)},
                  "iteration": 269999}
    converted, report = convert_state_dict(checkpoint)
    matched, report = match_state_dict(converted, r50_model.state_dict(), report)
    assert report.ok, report.summary()
    assert sorted(report.dropped) == ["pixel_mean", "pixel_std"] and not report.renamed
    r50_model.load_state_dict(matched, strict=True)
    _assert_same_values(r50_model.state_dict(), r50_adelaidet)


def test_old_centerness_name_module_prefix_and_bn_counters_into_rt(rt_model):
    """550/RT layout (shared tower, P3-P6), old FCOS names, DDP prefix, SyncBN backbone counters."""
    source = adelaidet_state_dict(backbone_bn=True, old_centerness=True, **SHARED_TOWER)
    checkpoint = {"module." + k: v for k, v in source.items()}
    model = rt_model
    matched, report = match_state_dict(from_adelaidet(checkpoint), model.state_dict())
    assert report.ok, report.summary()
    model.load_state_dict(matched, strict=True)
    torch.testing.assert_close(model.state_dict()["proposal_generator.fcos_head.ctrness.weight"],
                               source["proposal_generator.fcos_head.centerness.weight"])
    assert model.state_dict()["backbone.bottom_up.res3.0.conv1.norm.num_batches_tracked"] == 1234


def test_bn_counters_are_dropped_for_frozen_bn_and_filled_for_bn(rt_model):
    # A SyncBN-trained backbone into FrozenBN (550_R_50_3x): counters dropped.
    frozen_model = build_model(get_config("550_R_50_3x"))
    _, report = match_state_dict(from_adelaidet(adelaidet_state_dict(backbone_bn=True, **SHARED_TOWER)),
                                 frozen_model.state_dict())
    assert report.ok and len(report.dropped) == 53 and not report.filled  # 53 backbone norms in ResNet-50
    # A FrozenBN checkpoint into a trainable-BN backbone (RT): counters filled with 0.
    bn_model = rt_model
    matched, report = match_state_dict(from_adelaidet(adelaidet_state_dict(**SHARED_TOWER)), bn_model.state_dict())
    assert report.ok and len(report.filled) == 53 and not report.dropped
    bn_model.load_state_dict(matched, strict=True)


def test_convert_checkpoint_round_trip(tmp_path, r50_model, r50_adelaidet):
    src, out = tmp_path / "adelaidet.pth", tmp_path / "ours.pth"
    torch.save({"model": r50_adelaidet, "iteration": 5, "scheduler": {"last_epoch": 5}}, src)
    report = convert_checkpoint(src, out, "R_50_3x")
    assert report.ok and not report.notes
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {"model", "config"} and saved["config"] == get_config("R_50_3x").to_dict()
    model = r50_model  # R_50_1x and R_50_3x share the model section
    load_weights(model, out, get_config("R_50_3x"))  # strict load through the public loader
    _assert_same_values(model.state_dict(), r50_adelaidet)
    # Converting our own output again is the identity.
    again, report = match_state_dict(from_adelaidet(saved), model.state_dict())
    assert report.ok and all(torch.equal(again[k], saved["model"][k]) for k in saved["model"])


def test_num_classes_is_taken_from_the_checkpoint(tmp_path):
    src, out = tmp_path / "person.pth", tmp_path / "ours.pth"
    torch.save({"model": adelaidet_state_dict(num_classes=1, **SHARED_TOWER)}, src)
    report = convert_checkpoint(src, out, "550_R_50_3x")
    assert report.ok and "num_classes set to 1" in report.notes[0]
    assert torch.load(out, weights_only=True)["config"]["model"]["num_classes"] == 1


def test_mismatching_checkpoint_gives_a_report_and_writes_nothing(tmp_path, r50_adelaidet):
    broken = dict(r50_adelaidet)
    broken["roi_heads.extra.weight"] = torch.zeros(3)
    del broken["backbone.fpn_lateral4.bias"]
    src, out = tmp_path / "broken.pth", tmp_path / "ours.pth"
    torch.save({"model": broken}, src)
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(src, out, "R_50_3x", overrides={"model.blender.attn_size": 7})  # top_layer shape differs
    message = str(info.value)
    assert "MISSING in checkpoint (1): backbone.fpn_lateral4.bias" in message
    assert "UNEXPECTED in checkpoint (1): roi_heads.extra.weight" in message
    assert "top_layer.weight: checkpoint (784, 256, 3, 3) vs model (196, 256, 3, 3)" in message
    assert not out.exists()


def test_bad_input_errors(tmp_path):
    with pytest.raises(TypeError, match="must be a dict"):
        from_adelaidet([torch.zeros(1)])
    with pytest.raises(TypeError, match=r"checkpoint\['model'\] must be a state dict"):
        from_adelaidet({"model": 3})
    with pytest.raises(TypeError, match=r"'top_layer.weight' must be a Tensor.*ndarray"):
        from_adelaidet({"top_layer.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="empty"):
        from_adelaidet({"model": {}})
    with pytest.raises(ValueError, match="two checkpoint keys map to"):
        from_adelaidet({"proposal_generator.fcos_head.centerness.weight": torch.zeros(1),
                        "proposal_generator.fcos_head.ctrness.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        convert_checkpoint(tmp_path / "missing.pth", tmp_path / "out.pth", "R_50_3x")
    with pytest.raises(ValueError, match="unknown config name"):
        torch.save({"model": {"top_layer.weight": torch.zeros(1)}}, tmp_path / "x.pth")
        convert_checkpoint(tmp_path / "x.pth", tmp_path / "out.pth", "R_50_9x")


class _Payload:
    """An object whose unpickling would run code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_untrusted_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": _Payload()}, handle, protocol=2)
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_checkpoint(path, tmp_path / "out.pth", "R_50_3x")


def test_r101_checkpoint_loads_strictly():
    model = build_model(get_config("R_101_3x"))
    matched, report = match_state_dict(from_adelaidet(adelaidet_state_dict(depth=101)), model.state_dict())
    assert report.ok, report.summary()
    model.load_state_dict(matched, strict=True)


# ----------------------------------------------------------------------------- the output file


@pytest.fixture(scope="module")
def lite_checkpoint(tmp_path_factory):
    """An 'AdelaiDet' checkpoint of the lite model (our names are AdelaiDet's), fast to convert."""
    path = tmp_path_factory.mktemp("lite") / "lite.pth"
    torch.save({"model": build_model(get_config("lite_mobilenet_v2")).state_dict()}, path)
    return path


def test_an_output_directory_is_refused_before_any_work(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match=f"output {tmp_path / 'out'} is a directory"):
        convert_checkpoint(tmp_path / "missing.pth", tmp_path / "out", "lite_mobilenet_v2")  # not the missing input
    assert list((tmp_path / "out").iterdir()) == []


def test_a_failing_write_leaves_no_file(tmp_path, lite_checkpoint, monkeypatch):
    import blendmask.serialization as serialization

    def save_then_fail(obj, handle):
        handle.write(b"x" * 100_000)  # part of the file is written, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(serialization.torch, "save", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        convert_checkpoint(lite_checkpoint, tmp_path / "out" / "ours.pth", "lite_mobilenet_v2")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_the_output_mode_follows_the_umask(tmp_path, lite_checkpoint, mask, mode):
    import os
    import stat

    previous = os.umask(mask)
    try:
        convert_checkpoint(lite_checkpoint, tmp_path / "ours.pth", "lite_mobilenet_v2")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "ours.pth").st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.pth"]
    load_weights(build_model(get_config("lite_mobilenet_v2")), tmp_path / "ours.pth", get_config("lite_mobilenet_v2"))


def test_a_checkpoint_of_numpy_arrays_converts_and_loads_strictly(tmp_path):
    """detectron2 accepts numpy arrays inside "model" and older AdelaiDet files hold them: every
    float tensor as a float32 array, every BN counter as an int64 numpy scalar."""
    state = build_model(get_config("lite_mobilenet_v2")).state_dict()
    arrays = {k: (np.int64(int(v)) if k.endswith("num_batches_tracked") else v.numpy()) for k, v in state.items()}
    assert any(isinstance(v, np.int64) for v in arrays.values())
    path = tmp_path / "numpy.pth"
    torch.save({"model": arrays}, path)
    report = convert_checkpoint(path, tmp_path / "ours.pth", "lite_mobilenet_v2")
    assert report.ok
    loaded = torch.load(tmp_path / "ours.pth", weights_only=True)["model"]
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_an_existing_output_is_kept_unless_overwrite(tmp_path, lite_checkpoint):
    """convert never replaces a file it did not create: an existing output is refused (the file
    is untouched), and replaced only with overwrite=True (``--overwrite``)."""
    from blendmask.cli import main

    out = tmp_path / "ours.pth"
    out.write_bytes(b"the user's file")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_checkpoint(lite_checkpoint, out, "lite_mobilenet_v2")
    assert main(["convert", str(lite_checkpoint), str(out), "--config", "lite_mobilenet_v2"]) == 1
    assert out.read_bytes() == b"the user's file"
    assert main(["convert", str(lite_checkpoint), str(out), "--config", "lite_mobilenet_v2", "--overwrite"]) == 0
    load_weights(build_model(get_config("lite_mobilenet_v2")), out, get_config("lite_mobilenet_v2"))
