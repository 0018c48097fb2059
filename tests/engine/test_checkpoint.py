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
    capture_all_ranks_rng_state,
    capture_rng_state,
    load_checkpoint,
    preserved_rng_state,
    restore_rng_state,
    rng_state_of_this_rank,
)
from tests.helpers.paths import subprocess_env


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
    env = subprocess_env()
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".model_0000001.pth."), left  # the killed save's temp file
    ckpt = Checkpointer(tmp_path)  # the next start cleans it up
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
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


def test_checkpointer_start_removes_only_its_own_temp_files(tmp_path):
    own = [".model_0000010.pth.k2j4_x9a.tmp", ".model_final.pth.abcd1234.tmp", ".last_checkpoint.zz_99xyz.tmp"]
    others = [".notes.tmp", "model.pth.tmp", ".model_final.pth.tmp", ".data.json.abcd1234.tmp", "x.pth",
              ".model_0000010.pth.k2j4_x9a.tmp.bak"]
    for name in own + others:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".sub.pth.abcd1234.tmp").mkdir()
    removed = Checkpointer(tmp_path).remove_stale_temp_files()  # already cleaned at construction
    assert removed == []
    assert sorted(os.listdir(tmp_path)) == sorted(others + [".sub.pth.abcd1234.tmp"])
    Checkpointer(tmp_path / "does-not-exist-yet")  # nothing to clean, no error


def test_rng_states_of_all_ranks_single_process(tmp_path):
    torch.manual_seed(5)
    saved = capture_all_ranks_rng_state()
    assert saved["world_size"] == 1 and len(saved["ranks"]) == 1
    expected = torch.rand(3)
    restore_rng_state(rng_state_of_this_rank(saved, source="x.pth"))
    assert torch.equal(torch.rand(3), expected)
    # The single-state format of older checkpoints counts as one process.
    restore_rng_state(rng_state_of_this_rank(saved["ranks"][0], source="old.pth"))
    assert torch.equal(torch.rand(3), expected)
    two = {"world_size": 2, "ranks": saved["ranks"] * 2}
    with pytest.raises(ValueError, match=r"cannot resume two\.pth: .*2 process\(es\), this run has 1"):
        rng_state_of_this_rank(two, source="two.pth")


def test_preserved_rng_state_undoes_draws_inside_the_block():
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = (torch.rand(2), np.random.rand(), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    with preserved_rng_state():
        torch.rand(10), np.random.rand(10), random.random()
    got = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]
