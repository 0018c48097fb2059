"""``eval --tta`` / ``predict --tta``: option errors are one line, before any model is loaded."""
from __future__ import annotations

import pytest

from blendmask.cli import main


@pytest.mark.parametrize("argv, message", [
    (["eval", "--weights", "w.pt", "--data", "d", "--tta-sizes", "640"], "--tta-sizes needs --tta"),
    (["predict", "x.png", "--weights", "w.pt", "--out", "o", "--tta-sizes", "640"], "--tta-sizes needs --tta"),
    (["predict", "x.png", "--weights", "w.pt", "--out", "o", "--tta", "--show-bases"], "--show-bases"),
])
def test_tta_option_errors(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
