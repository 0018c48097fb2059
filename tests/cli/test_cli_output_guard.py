"""Every command that writes holds the output guard: a live run's output is refused in one line
naming it, and no command replaces a file that no blendmask run created."""
import json
import os

import pytest

from blendmask.cli import main
from blendmask.output_guard import MANIFEST_FILE, guard_output_dir, guard_output_file

TINY = 64
TINY_SET = ["solver.ims_per_batch=2", "solver.warmup_iters=1", "solver.steps=()", "solver.max_iter=1",
            "solver.checkpoint_period=0", f"input.min_size_train=({TINY},)", f"input.max_size_train={TINY}",
            f"input.min_size_test={TINY}", f"input.max_size_test={TINY}"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("guard_shapes")
    assert main(["make-shapes", str(out), "--train", "2", "--val", "1", "--size", str(TINY)]) == 0
    return out


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def _train(shapes, out, *extra):
    return main(["train", "--data", str(shapes), "--output", str(out), "--backbone-weights", "none",
                 "--set", *TINY_SET, *extra])


DIRECTORY_COMMANDS = {
    "train": lambda shapes, out: ["train", "--data", str(shapes), "--output", str(out)],
    "eval": lambda shapes, out: ["eval", "--weights", "w.pth", "--data", str(shapes), "--output", str(out)],
    "predict": lambda shapes, out: ["predict", str(shapes / "val" / "000000.png"), "--weights", "w.pth",
                                    "--out", str(out)],
    "ablate": lambda shapes, out: ["ablate", "--data", str(shapes), "--grid", "merge", "--output", str(out)],
    "demo": lambda shapes, out: ["demo", "--fast", "--output", str(out)],
}


@pytest.mark.parametrize("command", sorted(DIRECTORY_COMMANDS))
def test_an_output_directory_in_use_is_refused_naming_its_owner(command, shapes, tmp_path, capsys):
    out = tmp_path / "out"
    with guard_output_dir(out, command="blendmask train"):
        assert main(DIRECTORY_COMMANDS[command](shapes, out)) == 1
    line = _error_line(capsys)
    assert f"is in use by 'blendmask train' (pid {os.getpid()} on host" in line


@pytest.mark.parametrize("command", ["convert", "export-onnx"])
def test_an_output_file_being_written_is_refused(command, tmp_path, capsys):
    out = tmp_path / "model.out"
    argv = (["convert", "in.pth", str(out), "--config", "R_50_3x"] if command == "convert"
            else ["export-onnx", "--config", "lite_mobilenet_v2", "--out", str(out)])
    with guard_output_file(out, option="--out", command="blendmask export-onnx"):
        assert main(argv) == 1
    assert "is in use by 'blendmask export-onnx'" in _error_line(capsys)


def test_export_onnx_refuses_an_existing_file(tmp_path, capsys):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the user's")
    assert main(["export-onnx", "--config", "lite_mobilenet_v2", "--out", str(out)]) == 1
    assert "--overwrite" in _error_line(capsys) and out.read_bytes() == b"the user's"


@pytest.mark.parametrize("through_symlink", [False, True])
def test_train_never_replaces_files_it_did_not_create(through_symlink, shapes, tmp_path, capsys):
    user = tmp_path / "user"
    user.mkdir()
    files = {"metrics.jsonl": b"my notes\n", "model_final.pth": b"my weights",
             ".model_final.pth.abcd1234.tmp": b"named like a temp file"}
    for name, content in files.items():
        (user / name).write_bytes(content)
    out = user
    if through_symlink:
        out = tmp_path / "link"
        out.symlink_to(user)
    assert _train(shapes, out) == 1
    line = _error_line(capsys)
    assert f"--output {out} holds '.model_final.pth.abcd1234.tmp' (and 2 more), which was not made by 'blendmask train' or another blendmask run" in line
    assert {p.name: p.read_bytes() for p in user.iterdir()} == files


def test_train_overwrite_replaces_only_an_earlier_runs_outputs(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(shapes, out) == 0
    assert "model_final.pth" in json.loads((out / MANIFEST_FILE).read_text())["files"]
    capsys.readouterr()
    assert _train(shapes, out) == 1
    assert "--overwrite" in _error_line(capsys)
    (out / "last_checkpoint").write_text("model_final.pth")  # rewritten: still ours
    assert _train(shapes, out, "--overwrite") == 0
    capsys.readouterr()
    (out / "notes.txt").write_text("mine")
    assert _train(shapes, out, "--overwrite") == 1
    assert "'notes.txt'" in _error_line(capsys)
    assert (out / "notes.txt").read_text() == "mine" and (out / "model_final.pth").is_file()
