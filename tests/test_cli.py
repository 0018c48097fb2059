"""The ``blendmask`` command: every subcommand on tiny data, and clear one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blendmask.cli import COMMANDS, main, parse_overrides

TINY = 64  # image side of the tiny synthetic set
TINY_SET = [
    "solver.ims_per_batch=2", "solver.warmup_iters=2", "solver.steps=(100,)",
    f"input.min_size_train=({TINY},)", f"input.max_size_train={TINY}",
    f"input.min_size_test={TINY}", f"input.max_size_test={TINY}",
]
REPO = Path(__file__).resolve().parents[1]


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    assert main(["make-shapes", str(out), "--train", "6", "--val", "3", "--size", str(TINY), "--seed", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    code = main(["train", "--data", str(shapes), "--output", str(out), "--backbone-weights", "none",
                 "--set", "solver.max_iter=4", "solver.checkpoint_period=2", *TINY_SET])
    assert code == 0
    return out


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


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
            "solver.checkpoint_period=0", *TINY_SET]

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
    for name in ("model_0000002.pth",):
        (out / name).write_bytes((trained / name).read_bytes())
    (out / "last_checkpoint").write_text("model_0000002.pth")
    code = main(["train", "--data", str(shapes), "--output", str(out), "--resume", "--backbone-weights", "none",
                 "--set", "solver.max_iter=4", "solver.checkpoint_period=2", *TINY_SET])
    assert code == 0
    ours = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "loss_total" in l]
    reference = [json.loads(l) for l in (trained / "metrics.jsonl").read_text().splitlines() if "loss_total" in l]
    assert [r["iteration"] for r in ours] == [3, 4]
    assert [r["loss_total"] for r in ours] == [r["loss_total"] for r in reference[2:]]


def test_train_refuses_to_overwrite_without_resume(shapes, trained, capsys):
    code = main(["train", "--data", str(shapes), "--output", str(trained), "--set", *TINY_SET])
    assert code == 1
    assert "--resume" in _error_line(capsys)


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
    for command in COMMANDS:
        if command.name == "bench":
            continue  # forwards --help to the benchmark's own parser (tested below)
        with pytest.raises(SystemExit) as exc:
            main([command.name, "--help"])
        assert exc.value.code == 0
        assert "usage: blendmask " + command.name in capsys.readouterr().out


def test_bench_forwards_help_to_the_benchmark(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out


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
        (["make-shapes", "{tmp}/s", "--size", "8"], "size"),
        (["make-shapes", "{tmp}/s", "--train", "x"], "invalid int value"),
        (["convert", "{missing}", "{tmp}/out.pth", "--config", "R_50_3x"], "not found"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_nonzero_with_one_line(argv, needle, shapes, trained, tmp_path, capsys):
    fill = {"data": str(shapes), "missing": str(tmp_path / "missing"), "tmp": str(tmp_path),
            "weights": str(trained / "model_final.pth"), "image": str(next((shapes / "val").glob("*.png")))}
    code = main([arg.format(**fill) for arg in argv])
    assert code != 0
    assert needle in _error_line(capsys)


def test_parse_overrides():
    assert parse_overrides(["solver.max_iter=300", "solver.steps=(10, 20)", "solver.amp=false",
                            "model.backbone.name=mobilenet_v2", "input.min_size_train=[256,288]"]) == {
        "solver.max_iter": 300, "solver.steps": (10, 20), "solver.amp": False,
        "model.backbone.name": "mobilenet_v2", "input.min_size_train": (256, 288)}


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "blendmask", "eval", "--weights", "/nonexistent.pth",
                           "--data", "/nonexistent"], env=_env(), capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr


def test_torchrun_two_processes(shapes, tmp_path):
    """``torchrun --nproc_per_node 2 -m blendmask train`` with gloo: both ranks train and agree."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "blendmask", "train", "--data", str(shapes), "--output", str(out), "--backbone-weights", "none",
           "--set", "solver.max_iter=2", "solver.checkpoint_period=0", "solver.eval_period=0", *TINY_SET]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final weights:") == 1  # rank 0 reports, rank 1 stays quiet
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "loss_total" in l]
    assert [r["iteration"] for r in records] == [1, 2]  # one metrics file, written by rank 0
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == 2
