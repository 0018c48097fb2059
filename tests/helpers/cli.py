"""What the command-line tests share: the one-line error check and the tiny synthetic sets' settings."""
from __future__ import annotations

#: image side (pixels) of the tiny synthetic sets the command-line tests train and evaluate on
IMAGE_SIDE = 64

#: ``--set`` overrides that make a training run on the tiny sets a few seconds long
TINY_RUN_SET = [
    "solver.ims_per_batch=2", "solver.warmup_iters=2", "solver.steps=()",
    f"input.min_size_train=({IMAGE_SIDE},)", f"input.max_size_train={IMAGE_SIDE}",
    f"input.min_size_test={IMAGE_SIDE}", f"input.max_size_test={IMAGE_SIDE}",
]


def error_line(capsys) -> str:
    """The one line a command printed to stderr for a user error (``error: ...``), no traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]
