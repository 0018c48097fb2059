"""SIGTERM stops a command as Ctrl-C does: one line saying so, with the last checkpoint of a training run."""
import os
import signal

import pytest

from blendmask.cli import main
from blendmask.engine import Trainer

TINY = 64
TINY_SET = ["solver.ims_per_batch=2", "solver.warmup_iters=1", "solver.steps=()", "solver.max_iter=5",
            "solver.checkpoint_period=1", f"input.min_size_train=({TINY},)", f"input.max_size_train={TINY}",
            f"input.min_size_test={TINY}", f"input.max_size_test={TINY}"]


@pytest.mark.parametrize("signum, status, word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                  (signal.SIGINT, 130, "interrupted")])
def test_a_signal_during_training_names_the_last_checkpoint(signum, status, word, tmp_path, monkeypatch, capsys):
    data = tmp_path / "shapes"
    assert main(["make-shapes", str(data), "--train", "2", "--val", "0", "--size", str(TINY)]) == 0
    real_step = Trainer.run_step

    def step_then_signal(self):
        if self.iter == 2:
            os.kill(os.getpid(), signum)
        return real_step(self)

    monkeypatch.setattr(Trainer, "run_step", step_then_signal)
    capsys.readouterr()
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--output", str(out), "--backbone-weights", "none",
                 "--set", *TINY_SET]) == status
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"error: {word}: training stopped at iteration 2; the last checkpoint is "
                    f"{out / 'model_0000002.pth'} (continue with --resume)")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
