"""``blendmask analyze --output``: a rerun replaces an earlier analysis there; a directory holding
anything else is refused in one line, its files untouched."""
from __future__ import annotations

import json

from blendmask.cli import main
from tests.cli.test_analyze_command import _data_dir


def test_analyze_reruns_over_its_own_output_but_refuses_a_foreign_directory(tmp_path, capsys):
    data = _data_dir(tmp_path / "data")
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [2, 2, 8, 8]}]))
    out = tmp_path / "analysis"
    argv = ["analyze", "--results", str(results), "--data", str(data), "--output", str(out), "--gallery", "0"]
    assert main(argv) == 0
    assert main(argv) == 0 and (out / "analysis.json").is_file()
    capsys.readouterr()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert main(argv[:-3] + [str(foreign), "--gallery", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not hold an earlier analysis" in err and "\n" not in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
