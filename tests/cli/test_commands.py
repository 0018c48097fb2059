"""The ``blendmask`` command: every subcommand on tiny data, clear one-line errors for bad input,
tracebacks for everything else, and output locations checked before the work."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blendmask.cli import COMMANDS, main
from tests.helpers.cli import IMAGE_SIDE, TINY_RUN_SET, error_line
from tests.helpers.paths import subprocess_env



@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    assert main(["make-shapes", str(out), "--train", "6", "--val", "3", "--size", str(IMAGE_SIDE), "--seed", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    code = main(["train", "--data", str(shapes), "--output", str(out), "--backbone-weights", "none",
                 "--set", "solver.max_iter=4", "solver.checkpoint_period=2", *TINY_RUN_SET])
    assert code == 0
    return out


def test_make_shapes_writes_a_coco_set(shapes):
    train = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    assert len(train["images"]) == 6 and len(list((shapes / "val").glob("*.png"))) == 3


def test_train_writes_checkpoints_metrics_and_curve(trained):
    assert sorted(p.name for p in trained.glob("*.pth")) == ["model_0000002.pth", "model_final.pth"]
    records = [json.loads(l) for l in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "loss_total" in r] == [1, 2, 3, 4]
    assert any("eval" in r for r in records)  # evaluated on the val split at the end
    assert (trained / "loss_curve.png").is_file()
    final = torch.load(trained / "model_final.pth", weights_only=True)
    assert final["class_names"] == ["circle", "rectangle", "triangle", "ellipse"]
    assert final["config"]["model"]["num_classes"] == 4 and final["config"]["solver"]["max_iter"] == 4


def test_train_on_one_json_evaluates_only_an_explicit_val_set(shapes, tmp_path):
    train_json = str(shapes / "annotations" / "instances_train.json")
    args = ["train", "--data", train_json, "--backbone-weights", "none", "--set", "solver.max_iter=2",
            "solver.checkpoint_period=0", *TINY_RUN_SET]

    def evaluated(out):
        records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        return any("eval" in r for r in records)

    assert main([*args, "--output", str(tmp_path / "alone")]) == 0
    assert not evaluated(tmp_path / "alone")  # never scores the training images as "val"
    assert main([*args, "--output", str(tmp_path / "with_val"), "--val-data", str(shapes)]) == 0
    assert evaluated(tmp_path / "with_val")


def test_train_resume_continues_to_a_new_max_iter(shapes, trained, tmp_path):
    out = tmp_path / "resumed"
    out.mkdir()
    for name in ("model_0000002.pth", ".blendmask-manifest.json"):  # a copy of a run keeps its manifest
        (out / name).write_bytes((trained / name).read_bytes())
    (out / "last_checkpoint").write_text("model_0000002.pth")
    code = main(["train", "--data", str(shapes), "--output", str(out), "--resume", "--backbone-weights", "none",
                 "--set", "solver.max_iter=4", "solver.checkpoint_period=2", *TINY_RUN_SET])
    assert code == 0
    ours = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "loss_total" in l]
    reference = [json.loads(l) for l in (trained / "metrics.jsonl").read_text().splitlines() if "loss_total" in l]
    assert [r["iteration"] for r in ours] == [3, 4]
    assert [r["loss_total"] for r in ours] == [r["loss_total"] for r in reference[2:]]


def test_train_refuses_to_overwrite_without_resume(shapes, trained, capsys):
    code = main(["train", "--data", str(shapes), "--output", str(trained), "--set", *TINY_RUN_SET])
    assert code == 1
    assert "--resume" in error_line(capsys)


def test_eval_prints_the_ap_table_and_writes_results(shapes, trained, tmp_path, capsys):
    code = main(["eval", "--weights", str(trained / "model_final.pth"), "--data", str(shapes),
                 "--output", str(tmp_path / "eval")])
    assert code == 0
    out = capsys.readouterr().out
    for word in ("AP50", "AP75", "APs", "APm", "APl", "segm", "bbox", "circle", "ellipse"):
        assert word in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "segm"}
    assert isinstance(json.loads((tmp_path / "eval" / "coco_instances_results.json").read_text()), list)


def test_predict_writes_overlays_bases_and_json(shapes, trained, tmp_path, capsys):
    images = sorted(str(p) for p in (shapes / "val").glob("*.png"))[:2]
    code = main(["predict", *images, "--weights", str(trained / "model_final.pth"), "--out", str(tmp_path),
                 "--score-threshold", "0.0", "--show-bases"])
    assert code == 0
    for image in images:
        stem = Path(image).stem
        assert (tmp_path / f"{stem}_pred.png").stat().st_size > 0
        assert (tmp_path / f"{stem}_bases.png").stat().st_size > 0
    results = json.loads((tmp_path / "predictions.json").read_text())
    assert [r["file"] for r in results["images"]] == images
    for record in results["images"]:
        for inst in record["instances"]:
            assert inst["class_name"] in results["class_names"] and 0.0 <= inst["score"] <= 1.0


def test_every_subcommand_has_help(capsys):
    assert [c.name for c in COMMANDS] == ["make-shapes", "slice-data", "train", "eval", "predict", "convert",
                                        "export-onnx", "ablate", "analyze", "demo"]
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([command.name, "--help"])
        assert exc.value.code == 0
        assert "usage: blendmask " + command.name in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--data", "{data}", "--config", "nope"], "unknown config name 'nope'"),
        (["train", "--data", "{data}", "--set", "solver.max_iter"], "expected KEY=VALUE"),
        (["train", "--data", "{data}", "--set", "solver.nope=3"], "solver.nope"),
        (["train", "--data", "{data}", "--set", "solver.max_iter=abc"], "solver.max_iter"),
        (["train", "--data", "{missing}"], "neither a directory nor a COCO JSON"),
        (["train"], "--data"),
        (["eval", "--weights", "{missing}", "--data", "{data}"], "not found"),
        (["predict", "{missing}", "--weights", "{weights}", "--out", "{tmp}"], "image not found"),
        (["predict", "{image}", "--weights", "{weights}", "--out", "{tmp}", "--score-threshold", "2"],
         "score_threshold"),
        (["predict", "{image}", "--weights", "{data}/annotations/instances_val.json", "--out", "{tmp}"],
         "cannot read checkpoint"),
        (["train", "--data", "{data}", "--val-data", "{missing}"], "--val-data"),
        (["predict", "{image}", "{image}", "--weights", "{weights}", "--out", "{tmp}"], "would both be written"),
        (["make-shapes", "{tmp}/s", "--size", "8"], "size"),
        (["make-shapes", "{tmp}/s", "--train", "x"], "invalid int value"),
        (["convert", "{missing}", "{tmp}/out.pth", "--config", "R_50_3x"], "not found"),
        (["frobnicate"], "invalid choice"),
        (["ablate", "--data", "{data}", "--grid", "nope"], "unknown grid 'nope'; valid grids: merge, resolution"),
        (["ablate", "--data", "{missing}", "--grid", "bases", "--output", "{tmp}/a"], "--data"),
        (["ablate", "--data", "{data}", "--grid", "bases", "--jobs", "99", "--output", "{tmp}/a"], "--jobs"),
    ],
)
def test_bad_arguments_exit_nonzero_with_one_line(argv, needle, shapes, trained, tmp_path, capsys):
    fill = {"data": str(shapes), "missing": str(tmp_path / "missing"), "tmp": str(tmp_path),
            "weights": str(trained / "model_final.pth"), "image": str(next((shapes / "val").glob("*.png")))}
    code = main([arg.format(**fill) for arg in argv])
    assert code != 0
    assert needle in error_line(capsys)


def test_missing_val_data_is_named_as_such(shapes, tmp_path, capsys):
    missing = tmp_path / "no_val"
    assert main(["train", "--data", str(shapes), "--val-data", str(missing), "--output", str(tmp_path / "run")]) == 1
    line = error_line(capsys)
    assert f"--val-data '{missing}' does not exist" in line and "--data " not in line
    assert not (tmp_path / "run").exists()


def test_predict_refuses_two_inputs_with_one_output_name(shapes, trained, tmp_path, capsys):
    image = next((shapes / "val").glob("*.png"))
    (tmp_path / "sub").mkdir()
    other = tmp_path / "sub" / image.name
    other.write_bytes(image.read_bytes())
    out = tmp_path / "out"
    code = main(["predict", str(image), str(other), "--weights", str(trained / "model_final.pth"), "--out", str(out)])
    assert code == 1
    line = error_line(capsys)
    assert str(image) in line and str(other) in line and f"{image.stem}_pred.png" in line
    assert not out.exists()


def _output_cases():
    """(argv, the function whose call is the long work, its module): output placeholders {out}."""
    return [
        (["train", "--data", "{data}", "--output", "{out}"], "blendmask.engine.defaults", "train", True),
        (["eval", "--weights", "{weights}", "--data", "{data}", "--output", "{out}"], "blendmask.engine.defaults", "evaluate", True),
        (["predict", "{image}", "--weights", "{weights}", "--out", "{out}"], "blendmask.engine.defaults", "predict", True),
        (["convert", "{weights}", "{out}", "--config", "R_50_1x"], "blendmask.convert", "convert_checkpoint", False),
        (["export-onnx", "--config", "lite_mobilenet_v2", "--out", "{out}"], "blendmask.engine.defaults", "export_model", False),
        (["ablate", "--data", "{data}", "--grid", "bases", "--output", "{out}"], "blendmask.ablate", "run_grid", True),
    ]


@pytest.mark.parametrize("argv, module, work, is_dir", _output_cases(), ids=lambda v: v[0] if isinstance(v, list) else None)
@pytest.mark.parametrize("where", ["wrong kind", "under a file"])
def test_output_location_is_checked_before_the_work(argv, module, work, is_dir, where, shapes, trained, tmp_path,
                                                    monkeypatch, capsys):
    import importlib

    def no_work(*args, **kwargs):
        raise AssertionError("the long work started before the output location was checked")

    monkeypatch.setattr(importlib.import_module(module), work, no_work)
    blocker = tmp_path / "blocker"
    if where == "wrong kind" and is_dir:
        blocker.write_text("a file where the output directory should go")
        out, needle = blocker, "exists and is not a directory"
    elif where == "wrong kind":
        blocker.mkdir()
        out, needle = blocker, "is a directory"
    else:
        blocker.write_text("a file where a parent directory should be")
        out, needle = blocker / "sub" / ("out" if is_dir else "out.pth"), f"{blocker} is not a directory"
    fill = {"data": str(shapes), "weights": str(trained / "model_final.pth"), "out": str(out),
            "image": str(next((shapes / "val").glob("*.png")))}
    assert main([arg.format(**fill) for arg in argv]) == 1
    line = error_line(capsys)
    assert needle in line and str(out) in line


def test_a_user_error_is_one_line_and_a_bug_is_a_traceback(shapes, trained, tmp_path, monkeypatch, capsys):
    argv = ["eval", "--weights", str(trained / "model_final.pth"), "--data", str(shapes), "--output", str(tmp_path)]

    def fail_with(exc):
        def evaluate(*args, **kwargs):
            raise exc
        monkeypatch.setattr("blendmask.engine.defaults.evaluate", evaluate)

    for bug in (ZeroDivisionError("division by zero"), RuntimeError("CUDA out of memory"), TypeError("bad call"),
                KeyError("area"), ImportError("no module named foo")):
        fail_with(bug)
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):") and f"{type(bug).__name__}: " in err, err

    from blendmask.engine import NonFiniteLossError
    from blendmask.errors import InputTypeError

    for deliberate in (ValueError("bad value"), FileNotFoundError("gone"), NonFiniteLossError("loss is nan"),
                       InputTypeError("wrong type")):
        fail_with(deliberate)
        assert main(argv) == 1
        assert error_line(capsys) == f"error: {deliberate}"

    monkeypatch.setenv("BLENDMASK_TRACEBACK", "1")
    assert main(argv) == 1
    assert "Traceback" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "blendmask", "eval", "--weights", "/nonexistent.pth",
                           "--data", "/nonexistent"], env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr


def test_torchrun_two_processes(shapes, tmp_path):
    """``torchrun --nproc_per_node 2 -m blendmask train`` with gloo: both ranks train and agree."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "blendmask", "train", "--data", str(shapes), "--output", str(out), "--backbone-weights", "none",
           "--set", "solver.max_iter=2", "solver.checkpoint_period=0", "solver.eval_period=0", *TINY_RUN_SET]
    proc = subprocess.run(cmd, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final weights:") == 1  # rank 0 reports, rank 1 stays quiet
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "loss_total" in l]
    assert [r["iteration"] for r in records] == [1, 2]  # one metrics file, written by rank 0
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == 2


def test_train_split_gets_the_config_augmentation(shapes):
    """``train`` builds its augmentation from the config: the instance crop of the 5x/dcni3 recipe
    when ``input.crop_enabled``, then the flip; evaluation splits get none."""
    from blendmask.engine.defaults import load_dataset
    from blendmask.config import get_config
    from blendmask.data.transforms import RandomHorizontalFlip, RandomInstanceCrop

    crop_cfg = get_config("R_101_dcni3_5x").input
    assert crop_cfg.crop_enabled
    kinds = [type(t) for t in load_dataset(str(shapes), "train", input_cfg=crop_cfg, augment=True).transforms.transforms]
    assert kinds == [RandomInstanceCrop, RandomHorizontalFlip]
    plain = get_config("lite_mobilenet_v2").input
    kinds = [type(t) for t in load_dataset(str(shapes), "train", input_cfg=plain, augment=True).transforms.transforms]
    assert kinds == [RandomHorizontalFlip]
    assert load_dataset(str(shapes), "val").transforms is None
