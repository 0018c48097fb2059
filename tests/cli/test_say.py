"""The CLI's messages during training do not break the progress bar's line."""
import io
import sys

from tqdm import tqdm

from blendmask import cli


def test_a_message_during_a_progress_bar_is_a_line_of_its_own(monkeypatch):
    terminal = io.StringIO()  # stdout and stderr on one terminal, as in a shell
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = tqdm(total=10, desc="train", file=sys.stderr, mininterval=0, ascii=True)
    bar.update(3)
    cli._say("val at iteration 3: mask AP 0.500")
    bar.update(1)
    bar.close()
    lines = terminal.getvalue().replace("\r", "\n").split("\n")
    assert "val at iteration 3: mask AP 0.500" in lines
