"""Smoke test of the blender benchmark (blendmask.bench): it runs, and writes its JSON and PNG."""
import json

import pytest

from blendmask import _extension
from blendmask.bench import main

pytestmark = pytest.mark.skipif(not _extension.extension_loaded(), reason=f"blendmask._C not built: {_extension.load_error()}")


def test_bench_writes_json_and_png(tmp_path, capsys):
    assert main(["--device", "cpu", "--counts", "1", "3", "--min-time", "0", "--max-repeats", "3", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "blender_cpu.json").read_text())
    assert [row["D"] for row in result["rows"]] == [1, 3]
    for row in result["rows"]:
        for impl in ("reference", "fused"):
            for mode in ("forward", "forward_backward"):
                assert row[f"{impl}_{mode}_ms"] > 0 and row[f"{impl}_{mode}_peak_bytes"] >= 0
    assert result["summary_at_100"] is None  # D=100 was not measured
    assert (tmp_path / "blender_cpu.png").stat().st_size > 0
    assert "D=3" in (tmp_path / "bench_blender.log").read_text()
    assert "fused f+b ms" in capsys.readouterr().out
