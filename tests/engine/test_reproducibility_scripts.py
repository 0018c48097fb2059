"""The reproducibility tools in benchmarks/: check_reproducibility.py (records every module output
and gradient of a few training steps, names the first record two runs disagree on) and
bench_top_layer_gather.py (time and bit-repeatability of the top layer's gather)."""
import importlib.util
import json
import subprocess
import sys

import torch
from torch import nn

from tests.helpers.paths import REPO, subprocess_env


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = _load("check_reproducibility")


def test_first_difference_names_the_first_record_that_differs():
    reference = [("step 0 forward a", "1", 1.0), ("step 0 forward b", "2", 2.0), ("step 0 backward b", "3", 3.0)]
    assert probe.first_difference(reference, list(reference)) == "identical"
    other = [reference[0], ("step 0 forward b", "9", 2.5), ("step 0 backward b", "8", 3.5)]
    assert probe.first_difference(reference, other) == "record 1/3: step 0 forward b: sums 2.0 vs 2.5"
    assert "order differs" in probe.first_difference(reference, [reference[1], reference[0], reference[2]])
    assert probe.first_difference(reference, reference[:2]) == "record counts differ: 3 vs 2"


def test_recorder_keeps_outputs_then_gradients_in_the_order_they_are_made():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    recorder = probe.Recorder(model)
    model(torch.randn(5, 3)).sum().backward()
    names = [what for what, _, _ in recorder.records]
    assert names[:4] == ["step 0 forward 0", "step 0 forward 1", "step 0 forward 2", "step 0 forward model"]
    assert names.index("step 0 backward 2") < names.index("step 0 backward 1") < names.index("step 0 backward 0")
    assert {"step 0 param 0.weight", "step 0 param 0.bias", "step 0 param 2.weight", "step 0 param 2.bias"} <= set(names)
    digest, total = recorder.records[0][1:]
    assert len(digest) == 40 and isinstance(total, float)


def test_one_thread_trainings_are_found_identical():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "check_reproducibility.py"), "--threads", "1",
                           "--runs", "2", "--steps", "1", "--images", "2", "--size", "64"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run 1 (1 threads, load 0): identical; weights: 0 tensors differ" in done.stdout


def test_gather_bench_writes_json_and_png_and_finds_the_embedding_repeatable(tmp_path):
    out = tmp_path / "gather"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_top_layer_gather.py"), "--threads", "1",
                           "--locations", "50", "--rounds", "1", "--repeats", "3", "--out", str(out)],
                          env=subprocess_env(MPLBACKEND="Agg"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(result["runs"]) == {"1:table[rows]", "1:index_select", "1:F.embedding"}
    assert result["runs"]["1:F.embedding"]["differing_runs"] == 0
    assert out.with_suffix(".png").stat().st_size > 0
