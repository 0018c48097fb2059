"""Smoke test of the blender benchmark script (benchmarks/bench_blender.py): it runs, and writes its JSON and PNG."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from blendmask import _extension
from tests.helpers.paths import REPO, subprocess_env

SCRIPT = REPO / "benchmarks" / "bench_blender.py"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = subprocess_env()
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.skipif(not _extension.extension_loaded(), reason=f"blendmask._C not built: {_extension.load_error()}")
def test_bench_writes_json_and_png(tmp_path):
    out = tmp_path / "out"
    proc = _run("--device", "cpu", "--counts", "1", "3", "--min-time", "0", "--rounds", "2", "--out-dir", str(out),
                "--memory-threads", "1", "4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "blender_cpu.json").read_text())
    assert [row["D"] for row in result["rows"]] == [1, 3]
    for row in result["rows"]:
        for impl in ("reference", "fused"):
            for mode in ("forward", "forward_backward"):
                assert row[f"{impl}_{mode}_ms"] >= row[f"{impl}_{mode}_min_ms"] > 0
                assert row[f"{impl}_{mode}_blocks"] >= 2  # one block at least per round
                assert row[f"{impl}_{mode}_peak_bytes"] >= 0
    assert result["summary_at_100"] is None  # D=100 was not measured
    by_threads = result["memory_vs_threads"]
    peaks = by_threads["fused_forward_backward_peak_bytes"]
    assert by_threads["D"] == 100 and set(peaks) == {"1", "4"} and all(v > 0 for v in peaks.values())
    assert by_threads["growth_1_to_4"] == pytest.approx(peaks["4"] / peaks["1"])
    assert "4 vs 1 threads" in proc.stdout
    assert (out / "blender_cpu.png").stat().st_size > 0
    assert "D=3" in (out / "bench_blender.log").read_text()
    assert "fused f+b ms" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written into the working directory


def test_bench_writes_next_to_itself_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("bench_blender", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_blender", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert Path(module.build_parser().get_default("out_dir")) == REPO / "benchmarks" / "results"


def test_bench_refuses_bad_counts_as_a_usage_error(tmp_path):
    proc = _run("--counts", "0", "--out-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and "--counts must be >= 1" in proc.stderr
    assert not (tmp_path / "out").exists()
