"""Atomic checkpoint writes, safe loads, RNG capture and the last-checkpoint pointer."""
import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from blendmask.engine.checkpoint import (
    Checkpointer,
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)


def _weights(value):
    return {"model": {"w": torch.full((4, 4), float(value))}, "config": {}, "iteration": value}


def test_save_and_load_roundtrip(tmp_path):
    atomic_save(_weights(3), tmp_path / "a.pth")
    data = load_checkpoint(tmp_path / "a.pth")
    assert data["iteration"] == 3 and torch.equal(data["model"]["w"], torch.full((4, 4), 3.0))
    assert sorted(os.listdir(tmp_path)) == ["a.pth"]  # no temp files left behind


def test_exception_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    atomic_save(_weights(1), path)

    def broken_save(obj, handle):
        handle.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save(_weights(2), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert sorted(os.listdir(tmp_path)) == ["model.pth"]


def test_process_killed_during_save_keeps_previous_checkpoint(tmp_path):
    """A real SIGKILL after the new data is written to the temp file but before the rename."""
    script = textwrap.dedent(f"""
        import os, signal, torch
        from blendmask.engine.checkpoint import Checkpointer
        ckpt = Checkpointer({str(tmp_path)!r})
        ckpt.save("model_0000001", {{"model": {{"w": torch.ones(3)}}, "iteration": 1}})
        real_fsync = os.fsync
        def die(fd):
            real_fsync(fd)
            os.kill(os.getpid(), signal.SIGKILL)
        os.fsync = die
        ckpt.save("model_0000001", {{"model": {{"w": torch.zeros(100000)}}, "iteration": 2}})
        ckpt.save("model_0000002", {{"model": {{"w": torch.zeros(3)}}, "iteration": 2}})
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpt = Checkpointer(tmp_path)
    assert ckpt.last_checkpoint() == tmp_path / "model_0000001.pth"
    data = load_checkpoint(tmp_path / "model_0000001.pth")
    assert data["iteration"] == 1 and torch.equal(data["model"]["w"], torch.ones(3))
    assert not (tmp_path / "model_0000002.pth").exists()


def test_pointer_names_the_newest_checkpoint(tmp_path):
    ckpt = Checkpointer(tmp_path / "out")
    assert ckpt.last_checkpoint() is None
    ckpt.save("model_0000005", _weights(5))
    ckpt.save("model_final", _weights(9))
    assert ckpt.last_checkpoint() == tmp_path / "out" / "model_final.pth"
    (tmp_path / "out" / "model_final.pth").unlink()
    with pytest.raises(FileNotFoundError, match="model_final.pth"):
        ckpt.last_checkpoint()


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint .*junk.pth"):
        load_checkpoint(tmp_path / "junk.pth")
    torch.save({"state": 1}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a blendmask weights file"):
        load_checkpoint(tmp_path / "other.pth")


class _Payload:  # an arbitrary pickled object: weights_only loading must refuse it
    pass


def test_load_refuses_arbitrary_pickles(tmp_path):
    torch.save({"model": {}, "evil": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="cannot read checkpoint .*weights_only=True"):
        load_checkpoint(tmp_path / "evil.pth")


def test_rng_state_roundtrip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # leaves a cached gauss in numpy's state
    atomic_save({"model": {}, "rng": capture_rng_state()}, tmp_path / "rng.pth")
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"])
    got = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2:] == got[2:]
