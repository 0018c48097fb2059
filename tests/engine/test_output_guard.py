"""The output guard: one lock per output, a manifest of what our runs made, nothing foreign replaced."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from blendmask.output_guard import (
    LOCK_FILE,
    MANIFEST_FILE,
    OutputInUseError,
    guard_output_dir,
    guard_output_file,
)


def test_second_guard_on_a_live_lock_is_refused_naming_the_owner(tmp_path):
    with guard_output_dir(tmp_path / "out", command="blendmask train"):
        with pytest.raises(OutputInUseError) as error:
            with guard_output_dir(tmp_path / "out", command="blendmask eval"):
                pass
    message = str(error.value)
    assert "\n" not in message
    assert f"pid {os.getpid()}" in message and socket.gethostname() in message and "'blendmask train'" in message


def test_live_lock_of_another_process_is_refused(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom blendmask.output_guard import guard_output_dir\n"
         f"with guard_output_dir({str(out)!r}, command='blendmask train'):\n"
         "    print('locked', flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputInUseError, match=f"pid {holder.pid} "):
            with guard_output_dir(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with guard_output_dir(out):  # the kernel dropped the dead holder's lock: taken over
        pass


def test_stale_lock_of_a_dead_process_is_taken_over_with_its_outputs(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    started = time.time() - 5
    (out / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                             "command": "blendmask train", "started": started}))
    (out / "model_0000100.pth").write_bytes(b"written by the killed run")
    with guard_output_dir(out) as guard:
        assert guard.own_files == ["model_0000100.pth"]
    assert f"pid {dead.pid}" in caplog.text and "no longer running" in caplog.text


def test_files_older_than_a_stale_lock_are_still_foreign(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_final.pth").write_bytes(b"the user's")
    os.utime(out / "model_final.pth", (time.time() - 100, time.time() - 100))
    (out / LOCK_FILE).write_text(json.dumps({"host": "h", "pid": 1, "started": time.time() - 50}))
    with pytest.raises(FileExistsError, match="'model_final.pth'"):
        with guard_output_dir(out):
            pass


def test_directory_with_a_foreign_file_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text("mine\n")
    (out / "model_final.pth").write_bytes(b"mine")
    with pytest.raises(FileExistsError) as error:
        with guard_output_dir(out, option="--output"):
            pass
    assert "'metrics.jsonl' (and 1 more)" in str(error.value) and "--output" in str(error.value)
    assert (out / "metrics.jsonl").read_text() == "mine\n"
    assert not (out / LOCK_FILE).exists() and not (out / MANIFEST_FILE).exists()


def test_symlinked_output_is_checked_at_its_target(tmp_path):
    target = tmp_path / "user_dir"
    target.mkdir()
    (target / "model_final.pth").write_bytes(b"mine")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(FileExistsError, match="model_final.pth"):
        with guard_output_dir(tmp_path / "link"):
            pass


def test_own_outputs_are_recorded_and_accepted_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    with guard_output_dir(out):
        (out / "eval").mkdir()
        (out / "eval" / "metrics.json").write_text("{}")
        (out / "model_final.pth").write_bytes(b"ours")
    assert json.loads((out / MANIFEST_FILE).read_text())["files"] == ["eval/metrics.json", "model_final.pth"]
    assert not (out / LOCK_FILE).exists()
    with guard_output_dir(out / "eval") as inner:  # a subdirectory: the parent's manifest counts
        assert inner.own_files == ["metrics.json"]
    with guard_output_dir(out) as guard:
        assert guard.own_files == ["eval/metrics.json", "model_final.pth"]


def test_remove_own_outputs_leaves_foreign_files_alone(tmp_path):
    out = tmp_path / "out"
    with guard_output_dir(out):
        (out / "sub").mkdir()
        (out / "sub" / "a.png").write_bytes(b"ours")
    with guard_output_dir(out) as guard:
        removed = guard.remove_own_outputs()
    assert removed == [out / "sub" / "a.png"]
    assert not (out / "sub").exists()


def test_owned_marker_adopts_a_directory_made_before_manifests(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / ".marker").write_text("x")
    (out / "data.json").write_text("{}")
    with guard_output_dir(out, owned_marker=".marker") as guard:
        assert guard.own_files == [".marker", "data.json"]


def test_output_file_guard_refuses_an_existing_file_and_a_live_writer(tmp_path):
    path = tmp_path / "model.onnx"
    with guard_output_file(path, option="--out", command="blendmask export-onnx"):
        with pytest.raises(OutputInUseError, match="'blendmask export-onnx'"):
            with guard_output_file(path, option="--out"):
                pass
        path.write_bytes(b"onnx")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with guard_output_file(path, option="--out"):
            pass
    with guard_output_file(path, option="--out", overwrite=True):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_run_that_wrote_nothing_leaves_no_directory(tmp_path):
    with pytest.raises(RuntimeError):
        with guard_output_dir(tmp_path / "a" / "b"):
            raise RuntimeError("failed before writing")
    assert list(tmp_path.iterdir()) == []
