"""blendmask.serialization: the one reader of weights files (clear one-line errors for every bad
file, at every entry point) and the atomic writer (no leftovers, file modes from the umask)."""
from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from blendmask.cli import main
from blendmask.engine.checkpoint import Checkpointer
from blendmask.serialization import (
    WeightsFileError,
    atomic_save,
    load_checkpoint,
    load_torch_file,
    read_state_dict,
)
from tests.helpers.cli import error_line
from tests.helpers.paths import subprocess_env


class _Payload:
    """An object whose unpickling would run code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def _good_file(path: Path) -> Path:
    torch.save({"model": {"w": torch.arange(20000, dtype=torch.float32)}}, path)
    return path


def _bad_files(root: Path):
    """``{case: (path, regex of the message)}`` for every way a file can be unreadable."""
    root.mkdir(parents=True, exist_ok=True)
    good = _good_file(root / "good.pth").read_bytes()
    files = {}

    def add(case, data, pattern):
        path = root / f"{case}.pth"
        path.write_bytes(data)
        files[case] = (path, pattern)

    not_torch = r"not a file written by torch.save"
    add("empty", b"", not_torch)
    add("text", b"not a checkpoint\n", not_torch)
    add("random", os.urandom(4096), not_torch)
    add("truncated", good[: len(good) // 2], not_torch)
    add("header_only", good[:64], not_torch)
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF  # inside the stored tensor: torch.load alone would return other weights
    add("damaged_tensor", bytes(damaged), r"fails its checksum")
    torch.save({"model": {}, "evil": _Payload()}, root / "refused.pth")
    files["refused"] = (root / "refused.pth", r"\(GLOBAL (builtins\.)?print\).*weights_only=True")
    with open(root / "refused_legacy.pth", "wb") as handle:
        pickle.dump({"model": _Payload()}, handle, protocol=2)
    files["refused_legacy"] = (root / "refused_legacy.pth", r"\(GLOBAL (builtins\.)?print\).*weights_only=True")
    (root / "folder.pth").mkdir()
    files["directory"] = (root / "folder.pth", r"not a regular file")
    return files


BAD_CASES = ["empty", "text", "random", "truncated", "header_only", "damaged_tensor", "refused",
             "refused_legacy", "directory"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return _bad_files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", BAD_CASES)
@pytest.mark.parametrize("reader", [load_torch_file, load_checkpoint, read_state_dict])
def test_every_bad_file_is_one_line_naming_the_file(bad_files, case, reader):
    path, pattern = bad_files[case]
    with pytest.raises(WeightsFileError, match=pattern) as info:
        reader(path, what="test file")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "test file" in message
    assert isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    for reader in (load_torch_file, load_checkpoint, read_state_dict):
        with pytest.raises(FileNotFoundError, match=f"test file not found: {tmp_path / 'nope.pth'}"):
            reader(tmp_path / "nope.pth", what="test file")


def test_a_good_file_reads(tmp_path):
    path = _good_file(tmp_path / "good.pth")
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(20000, dtype=torch.float32))
    assert list(read_state_dict(path)) == ["w"]
    legacy = tmp_path / "legacy.pth"  # the pre-zip torch.save format still loads
    torch.save({"model": {"w": torch.ones(2)}}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(legacy)["model"]["w"], torch.ones(2))


@pytest.mark.parametrize("content, pattern", [
    ([1, 2], r"is not a blendmask weights file: expected a dict with a 'model' state dict, got a list"),
    ({"state": 1}, r"is not a blendmask weights file: .*got a dict with keys \['state'\]"),
    ({"model": [torch.zeros(1)]}, r"its 'model' entry must hold a state dict \(str -> Tensor\), got a list"),
    ({"model": {"w": 3}}, r"its 'model' entry must hold a state dict .*entry 'w' is a int"),
])
def test_load_checkpoint_checks_the_structure(tmp_path, content, pattern):
    torch.save(content, tmp_path / "x.pth")
    with pytest.raises(WeightsFileError, match=pattern):
        load_checkpoint(tmp_path / "x.pth")


@pytest.mark.parametrize("content, pattern", [
    ([1, 2], r"the weights file must hold a state dict \(str -> Tensor\), got a list"),
    ({1: torch.zeros(1)}, r"entry 1 is a Tensor"),
    ({"model": {}}, r"holds an empty state dict"),
])
def test_read_state_dict_checks_the_structure(tmp_path, content, pattern):
    torch.save(content, tmp_path / "x.pth")
    with pytest.raises(WeightsFileError, match=pattern):
        read_state_dict(tmp_path / "x.pth")


def test_read_state_dict_unwraps_in_order(tmp_path):
    torch.save({"model": {"state_dict": {"w": torch.ones(1)}}}, tmp_path / "x.pth")
    assert list(read_state_dict(tmp_path / "x.pth", wrappers=("model", "state_dict"))) == ["w"]


# ----------------------------------------------------------------------------- entry points


ENTRY_CASES = ["random", "truncated", "damaged_tensor", "refused"]


@pytest.mark.parametrize("case", ENTRY_CASES)
def test_api_entry_points_give_the_same_clear_errors(bad_files, case):
    from blendmask.config import get_config
    from blendmask.deploy import export_onnx
    from blendmask.models import blendmask_mobilenet_v2_fpn, load_model_from_weights
    from blendmask.models.backbone import build_backbone

    path, pattern = bad_files[case]
    calls = {
        "weights file": lambda: blendmask_mobilenet_v2_fpn(num_classes=2, weights=path),
        "weights_backbone file": lambda: build_backbone(get_config("lite_mobilenet_v2").model.backbone,
                                                        weights_backbone=str(path)),
        "checkpoint": lambda: load_model_from_weights(path),
    }
    for what, call in calls.items():
        with pytest.raises(WeightsFileError, match=f"{what} {path}: .*{pattern}"):
            call()
    with pytest.raises(WeightsFileError, match=f"weights file {path}: .*{pattern}"):
        export_onnx("lite_mobilenet_v2", path.with_suffix(".onnx"), weights=path)
    assert not path.with_suffix(".onnx").exists()


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    assert main(["make-shapes", str(out), "--train", "2", "--val", "1", "--size", "64"]) == 0
    return out


@pytest.mark.parametrize("case", ENTRY_CASES)
def test_cli_flags_give_one_line_errors(bad_files, tiny_shapes, tmp_path, case, capsys):
    path, pattern = bad_files[case]
    image = next((tiny_shapes / "val").glob("*.png"))
    commands = {
        "weights file": ["export-onnx", "--config", "lite_mobilenet_v2", "--weights", str(path),
                         "--out", str(tmp_path / "m.onnx")],
        "weights_backbone file": ["train", "--data", str(tiny_shapes), "--output", str(tmp_path / "run"),
                                  "--backbone-weights", str(path), "--set", "solver.max_iter=1", "solver.steps=()"],
        "checkpoint": ["convert", str(path), str(tmp_path / "converted.pth"), "--config", "R_50_3x"],
    }
    for what, argv in commands.items():
        assert main(argv) == 1, argv
        line = error_line(capsys)
        assert f"{what} {path}" in line, line
        if case == "refused":
            assert "weights_only=True" in line, line
    for argv in (["predict", str(image), "--weights", str(path), "--out", str(tmp_path / "pred")],
                 ["eval", "--weights", str(path), "--data", str(tiny_shapes), "--output", str(tmp_path / "ev")]):
        assert main(argv) == 1, argv
        assert str(path) in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a failed command left files behind"


# ----------------------------------------------------------------------------- writing


@pytest.fixture
def umask():
    """Set the process umask for one test; restore it afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_of_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_save({"model": {}}, tmp_path / "a.pth")
    assert stat.S_IMODE(os.stat(tmp_path / "a.pth").st_mode) == mode
    ckpt = Checkpointer(tmp_path / "run").save("model_0000001", {"model": {}})
    for written in (ckpt, tmp_path / "run" / "last_checkpoint"):
        assert stat.S_IMODE(os.stat(written).st_mode) == mode, written
    # an existing file is replaced by a file of the umask's mode, not kept at its own
    os.chmod(tmp_path / "a.pth", 0o400)
    atomic_save({"model": {}}, tmp_path / "a.pth")
    assert stat.S_IMODE(os.stat(tmp_path / "a.pth").st_mode) == mode


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "a.pth"
    atomic_save({"model": {"w": torch.ones(1)}}, path)

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"model": {"w": torch.zeros(1000)}}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(1))


def test_models_do_not_import_the_engine():
    """The boundary runs one way: engine depends on models, models read files via serialization."""
    import subprocess
    import sys

    code = ("import sys, blendmask.models, blendmask.models.backbone, blendmask.convert, blendmask.serialization; "
            "print(sorted(m for m in sys.modules if m.startswith('blendmask.engine')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=subprocess_env())
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_the_umask_is_found_without_proc_too(umask, monkeypatch, mask):
    import blendmask.serialization as serialization

    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    umask(mask)
    assert serialization._umask() == mask  # from /proc/self/status on Linux
    monkeypatch.setattr(serialization, "open", no_proc, raising=False)
    assert serialization._umask() == mask  # by setting and restoring it
    assert os.umask(mask) == mask  # and it was restored


# ----------------------------------------------------------------------------- numpy contents


def test_numpy_arrays_and_scalars_in_model_are_read_as_tensors(tmp_path):
    """Older AdelaiDet/detectron2 files hold numpy arrays in "model": they load with
    weights_only (an explicit numpy allow-list) and come back as tensors of the same dtype."""
    import numpy as np

    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "numpy.pth"
    torch.save({"model": {"conv.weight": weight, "conv.bias": np.ones(3, np.float32),
                          "bn.num_batches_tracked": np.int64(7), "conv.scale": torch.ones(2)}}, path)
    for state in (load_checkpoint(path)["model"], read_state_dict(path)):
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        assert state["conv.weight"].dtype == torch.float32 and torch.equal(state["conv.weight"], torch.from_numpy(weight))
        assert state["conv.bias"].tolist() == [1.0, 1.0, 1.0]
        count = state["bn.num_batches_tracked"]
        assert count.dtype == torch.int64 and count.dim() == 0 and int(count) == 7
        assert torch.equal(state["conv.scale"], torch.ones(2))


def test_numpy_allow_list_still_refuses_code(tmp_path):
    """The allow-list admits numpy's array rebuilding only: other globals stay refused."""
    import numpy as np

    class Payload:
        def __reduce__(self):
            return (np.load, ("/nonexistent",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": Payload()}}, path)
    with pytest.raises(WeightsFileError, match=r"numpy.*weights_only=True"):
        load_checkpoint(path)
