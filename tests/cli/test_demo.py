"""The README's main job, ``blendmask demo``: a short smoke version (CI) and the full run (slow)."""
import json
import re
from pathlib import Path

import pytest

from blendmask.cli import main


def _picture_paths(out: str):
    lines = out.split("pictures:")[1].strip().splitlines()
    return [Path(line.strip()) for line in lines]


def test_demo_fast_runs_every_step(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    assert main(["demo", "--fast", "--output", str(out_dir)]) == 0
    out = capsys.readouterr().out
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in out
    assert re.search(r"mask AP = \d\.\d{3}, AP50 = \d\.\d{3}", out)
    assert "segm" in out and "bbox" in out  # the AP table
    pictures = _picture_paths(out)
    assert len(pictures) == 8  # 4 overlays + 4 bases/attention figures
    assert all(p.is_file() and p.stat().st_size > 0 for p in pictures)
    assert (out_dir / "train" / "model_final.pth").is_file()
    assert (out_dir / "train" / "loss_curve.png").is_file()
    metrics = json.loads((out_dir / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["segm"]["AP"] <= 1.0
    # A second run replaces the first instead of failing on the existing checkpoints.
    assert main(["demo", "--fast", "--output", str(out_dir)]) == 0


def test_demo_never_deletes_a_directory_it_did_not_make(tmp_path, capsys):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert main(["demo", "--fast", "--output", str(precious)]) == 1
    assert "was not made by 'blendmask demo'" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_full_demo_reaches_the_goal(tmp_path, capsys):
    """The issue's figure: mask AP >= 0.50 and AP50 >= 0.85 on the synthetic val split."""
    out_dir = tmp_path / "demo"
    assert main(["demo", "--output", str(out_dir)]) == 0
    metrics = json.loads((out_dir / "eval" / "metrics.json").read_text())
    assert metrics["segm"]["AP"] >= 0.50, metrics["segm"]
    assert metrics["segm"]["AP50"] >= 0.85, metrics["segm"]
