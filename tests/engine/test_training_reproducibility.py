"""Training is bit-reproducible for a seed at a fixed CPU thread count (docs/notes/hostile-input.md
says when it holds): two runs give identical weights, and no step sums a gradient with PyTorch's
atomic CPU accumulation, whose order follows the threads' timing."""
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from blendmask.cli import main
from tests.helpers.paths import subprocess_env

TINY = 64
TINY_SET = ["solver.ims_per_batch=2", "solver.warmup_iters=1", "solver.steps=()", "solver.max_iter=2",
            "solver.checkpoint_period=0", f"input.min_size_train=({TINY},)", f"input.max_size_train={TINY}",
            f"input.min_size_test={TINY}", f"input.max_size_test={TINY}"]


def _train_in_a_process(data, out, threads):
    env = subprocess_env(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, "-m", "blendmask", "train", "--data", str(data), "--output", str(out),
                    "--backbone-weights", "none", "--seed", "3", "--set", *TINY_SET],
                   env=env, check=True, capture_output=True, timeout=600)
    return torch.load(out / "model_final.pth", weights_only=True)["model"]


@pytest.mark.parametrize("threads", [1, 2])
def test_two_runs_give_identical_weights_at_a_fixed_thread_count(tmp_path, threads):
    data = tmp_path / "shapes"
    assert main(["make-shapes", str(data), "--train", "2", "--val", "0", "--size", str(TINY)]) == 0
    # a busy process takes turns with the training threads, as other work on a shared machine does
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if threads > 1 else None
    try:
        first, second = (_train_in_a_process(data, tmp_path / name, threads) for name in ("a", "b"))
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    assert first.keys() == second.keys()
    changed = [k for k in first if not torch.equal(first[k], second[k])]
    assert changed == []


class _RepeatedIndexAccumulations(TorchDispatchMode):
    """Records every ``index_put``/``put`` with ``accumulate=True`` whose indices repeat. On the
    CPU PyTorch runs a float one of >= 32768 elements with atomic adds when it has more than one
    thread, so repeated indices are summed in an order that follows the threads' timing (the
    backward of ``x[index]`` is one). Smaller ones run serially, but data with more positives
    makes them larger: none may have repeats."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name.lstrip("_").startswith(("index_put", "unsafe_index_put", "put")):
            accumulate = kwargs.get("accumulate", args[3] if len(args) > 3 else False)
            if accumulate and _has_repeats(args[1]):
                self.found.append(f"{func} of {tuple(args[2].shape)} values")
        return func(*args, **kwargs)


def _has_repeats(indices) -> bool:
    if isinstance(indices, torch.Tensor):  # put_: flat indices
        indices = [indices]
    indices = [i for i in indices if i is not None]
    if not indices or any(i.dtype == torch.bool for i in indices):
        return False  # a mask selects every element once
    rows = torch.stack(torch.broadcast_tensors(*indices), dim=-1).reshape(-1, len(indices))
    return rows.unique(dim=0).shape[0] < rows.shape[0]


@pytest.mark.parametrize("panoptic", [False, True], ids=["instance", "panoptic"])
def test_no_training_step_accumulates_repeated_indices(tmp_path, panoptic):
    data = tmp_path / "shapes"
    kind = ["--panoptic"] if panoptic else []
    assert main(["make-shapes", str(data), *kind, "--train", "2", "--val", "0", "--size", str(TINY)]) == 0
    with _RepeatedIndexAccumulations() as probe:
        assert main(["train", "--data", str(data), "--output", str(tmp_path / "run"), "--backbone-weights", "none",
                     "--seed", "3", "--set", *TINY_SET]) == 0
    assert probe.found == []
