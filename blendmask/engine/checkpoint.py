"""Checkpoints: atomic writes, safe loads (``weights_only=True``), RNG capture, and
rebuilding a model from a weights file's embedded config.

A weights file is ``{"model": state_dict, "config": BlendMaskConfig.to_dict(), ...}``.
Training checkpoints add ``optimizer``, ``scheduler``, ``iteration`` and ``rng``.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..serialization import atomic_save, load_checkpoint
from ..serialization import atomic_write as _atomic_write

__all__ = [
    "atomic_save",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "Checkpointer",
    "load_model_from_weights",
]

PathLike = Union[str, os.PathLike]
LAST_CHECKPOINT_FILE = "last_checkpoint"


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


class Checkpointer:
    """Periodic training checkpoints in ``output_dir``: ``model_XXXXXXX.pth`` (7-digit iteration),
    ``model_final.pth``, and a ``last_checkpoint`` text file naming the newest one.

    The pointer is only updated after the checkpoint file is completely written, so a crash
    during a save leaves the previous checkpoint (and the pointer to it) intact.
    """

    def __init__(self, output_dir: PathLike):
        self.output_dir = Path(output_dir)

    def save(self, name: str, data: Dict[str, Any]) -> Path:
        path = self.output_dir / f"{name}.pth"
        atomic_save(data, path)
        _atomic_write(self.output_dir / LAST_CHECKPOINT_FILE, lambda handle: handle.write(path.name.encode()))
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


def load_model_from_weights(path: PathLike, *, device: Union[str, torch.device] = "cpu") -> Tuple[nn.Module, Any]:
    """Rebuild the model described by a weights file's embedded config and load its weights.

    Returns ``(model, cfg)`` with the model in eval mode on ``device``.
    """
    from blendmask.config import BlendMaskConfig
    from blendmask.models import build_model

    data = load_checkpoint(path)
    if "config" not in data:
        raise ValueError(f"{path} has no embedded 'config'; convert AdelaiDet checkpoints with `blendmask convert`")
    cfg = BlendMaskConfig.from_dict(data["config"])
    model = build_model(cfg, weights_backbone=None)
    missing, unexpected = model.load_state_dict(data["model"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match its config {cfg.name!r}: missing keys {missing[:5]}, "
                         f"unexpected keys {unexpected[:5]}")
    return model.to(device).eval(), cfg
