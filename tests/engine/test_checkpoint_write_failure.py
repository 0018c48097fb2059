"""A checkpoint the system refuses to write (disk full, file size limit) is a one-line error naming
the file and the reason; the previous checkpoint survives."""
import errno
import os
import subprocess
import sys

import pytest
import torch

from blendmask.engine.checkpoint import Checkpointer
from blendmask.serialization import atomic_write

FILE_SIZE_LIMIT_SCRIPT = """
import resource, sys, torch
from blendmask.engine.checkpoint import Checkpointer
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
checkpointer = Checkpointer(sys.argv[1])
checkpointer.save("model_0000001", {"model": {"w": torch.zeros(1000)}})
try:
    checkpointer.save("model_0000002", {"model": {"w": torch.zeros(1 << 20)}})
except OSError as error:
    print(error.errno, str(error))
"""


def test_file_size_limit_names_the_file_and_the_last_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT_SCRIPT, str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    code, message = result.stdout.strip().split(" ", 1)
    assert int(code) == errno.EFBIG and "\n" not in message
    assert f"cannot write {tmp_path / 'model_0000002.pth'}: File too large (the largest file size allowed: ulimit -f" in message
    assert f"the last complete checkpoint is {tmp_path / 'model_0000001.pth'}" in message
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert torch.load(tmp_path / "model_0000001.pth", weights_only=True)["model"]["w"].numel() == 1000


class _FullDisk:
    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_disk_full_during_torch_save_is_named(tmp_path, monkeypatch):
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save("model_0000001", {"model": {"w": torch.zeros(3)}})
    real_fdopen = os.fdopen
    monkeypatch.setattr("blendmask.serialization.os.fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(OSError) as error:
        checkpointer.save("model_0000002", {"model": {"w": torch.zeros(3)}})
    assert error.value.errno == errno.ENOSPC
    assert str(error.value) == (f"cannot write {tmp_path / 'model_0000002.pth'}: No space left on device; it "
                                f"keeps its previous content, if any; the last complete checkpoint is "
                                f"{tmp_path / 'model_0000001.pth'}")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]


def test_other_write_errors_pass_unchanged(tmp_path):
    with pytest.raises(ValueError, match="not an OSError"):
        atomic_write(tmp_path / "f", lambda handle: (_ for _ in ()).throw(ValueError("not an OSError")))
    assert os.listdir(tmp_path) == []
