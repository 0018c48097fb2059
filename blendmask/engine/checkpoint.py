"""Training checkpoints: atomic writes, safe loads (``weights_only=True``), the periodic
checkpoints of a run and the RNG states that make a resume exact. (A model is rebuilt from a
weights file by :func:`blendmask.models.load_model_from_weights`.)

A weights file is ``{"model": state_dict, "config": BlendMaskConfig.to_dict(), ...}``.
Training checkpoints add ``optimizer``, ``scheduler``, ``iteration`` and ``rng``; ``rng`` is
``{"world_size": W, "ranks": [state of rank 0, ..., state of rank W-1]}`` (see
:func:`capture_all_ranks_rng_state`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np
import torch

from .._deprecation import renamed_attributes
from ..distributed import all_gather_objects, get_rank, get_world_size, is_main_process
from ..serialization import atomic_save, atomic_write, atomic_write_temp_files, load_checkpoint

__all__ = [
    "atomic_save",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "capture_all_ranks_rng_state",
    "rng_state_of_this_rank",
    "preserved_rng_state",
    "Checkpointer",
]

PathLike = Union[str, os.PathLike]
LAST_CHECKPOINT_FILE = "last_checkpoint"
logger = logging.getLogger(__name__)


def capture_rng_state() -> Dict[str, Any]:
    """The torch, numpy and python RNG states, as plain tensors/lists (loadable with weights_only)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"]), py_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture_all_ranks_rng_state() -> Dict[str, Any]:
    """Every rank's :func:`capture_rng_state`, gathered: ``{"world_size": W, "ranks": [...]}``.

    A collective: every rank must call it (with one process it is a plain capture).
    """
    states = all_gather_objects(capture_rng_state())
    return {"world_size": len(states), "ranks": states}


def rng_state_of_this_rank(saved: Dict[str, Any], *, source: PathLike) -> Dict[str, Any]:
    """This rank's entry of a checkpoint's ``rng`` (see :func:`capture_all_ranks_rng_state`).

    Raises ``ValueError`` naming ``source`` if the checkpoint was written by another number of
    processes: the RNG streams cannot be mapped onto other ranks and stay exact. Checkpoints from
    before per-rank states (a single state) count as written by one process.
    """
    if "ranks" not in saved:  # the single-state format of older checkpoints
        saved = {"world_size": 1, "ranks": [saved]}
    world_size = get_world_size()
    if int(saved["world_size"]) != world_size or len(saved["ranks"]) != world_size:
        raise ValueError(f"cannot resume {source}: it holds the RNG states of {saved['world_size']} process(es), "
                         f"this run has {world_size}; resume with the same number of processes, or start a new "
                         "run from its weights with --weights")
    return saved["ranks"][get_rank()]


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Run a block (e.g. an evaluation) without changing this process's torch, numpy, python (and
    CUDA) RNG states as seen by the code after it."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


# The temp files a killed save of a checkpoint or of the pointer leaves behind.
_CHECKPOINTER_TEMP_FILE = atomic_write_temp_files(r"[^/]+\.pth|" + re.escape(LAST_CHECKPOINT_FILE))


class Checkpointer:
    """Periodic training checkpoints in ``output_dir``: ``model_XXXXXXX.pth`` (7-digit iteration),
    ``model_final.pth``, and a ``last_checkpoint`` text file naming the newest one.

    The pointer is only updated after the checkpoint file is completely written, so a crash
    during a save leaves the previous checkpoint (and the pointer to it) intact. The temp files
    such a crash leaves (``.NAME.pth.XXXXXXXX.tmp``) are removed when the next Checkpointer on
    ``output_dir`` starts (on the main process only); no other file is touched.
    """

    def __init__(self, output_dir: PathLike):
        self.output_dir = Path(output_dir)
        if is_main_process():
            self.remove_stale_temp_files()

    def remove_stale_temp_files(self) -> List[Path]:
        """Delete the temp files a killed save left in ``output_dir``; returns what was deleted."""
        if not self.output_dir.is_dir():
            return []
        removed = []
        for entry in os.scandir(self.output_dir):
            if _CHECKPOINTER_TEMP_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        if removed:
            logger.info("removed %d temp file(s) left by an interrupted save in %s: %s", len(removed),
                        self.output_dir, ", ".join(sorted(p.name for p in removed)))
        return removed

    def save(self, name: str, data: Dict[str, Any]) -> Path:
        path = self.output_dir / f"{name}.pth"
        atomic_save(data, path)
        atomic_write(self.output_dir / LAST_CHECKPOINT_FILE, lambda handle: handle.write(path.name.encode()))
        return path

    def last_checkpoint(self) -> Optional[Path]:
        """The newest complete checkpoint, or ``None`` if there is none."""
        pointer = self.output_dir / LAST_CHECKPOINT_FILE
        if not pointer.is_file():
            return None
        path = self.output_dir / pointer.read_text().strip()
        if not path.is_file():
            raise FileNotFoundError(f"{pointer} names {path.name}, which does not exist")
        return path


__getattr__ = renamed_attributes(__name__, {"load_model_from_weights": "blendmask.models.load_model_from_weights"})
