"""Training is bit-reproducible for a seed with one CPU thread (docs/hostile_input.md says when it holds)."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from blendmask.cli import main

TINY = 64
TINY_SET = ["solver.ims_per_batch=2", "solver.warmup_iters=1", "solver.steps=()", "solver.max_iter=2",
            "solver.checkpoint_period=0", f"input.min_size_train=({TINY},)", f"input.max_size_train={TINY}",
            f"input.min_size_test={TINY}", f"input.max_size_test={TINY}"]
REPO = Path(__file__).resolve().parents[2]


def _train_in_a_process(data, out):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-m", "blendmask", "train", "--data", str(data), "--output", str(out),
                    "--backbone-weights", "none", "--seed", "3", "--set", *TINY_SET],
                   env=env, check=True, capture_output=True, timeout=600)
    return torch.load(out / "model_final.pth", weights_only=True)["model"]


def test_two_one_thread_runs_give_identical_weights(tmp_path):
    data = tmp_path / "shapes"
    assert main(["make-shapes", str(data), "--train", "2", "--val", "0", "--size", str(TINY)]) == 0
    first, second = (_train_in_a_process(data, tmp_path / name) for name in ("a", "b"))
    assert first.keys() == second.keys()
    changed = [k for k in first if not torch.equal(first[k], second[k])]
    assert changed == []
