"""Loads the compiled blender op (``blendmask._C``) and says which devices it serves.

Importing ``blendmask._C`` registers ``torch.ops.blendmask.blend`` and
``torch.ops.blendmask.blend_backward`` with the dispatcher (their kernels attach per
dispatch key: CPU and Meta always, CUDA in CUDA builds). When the extension is missing, callers
fall back to the pure-PyTorch reference and ``warn_fallback_once`` says so once.
"""
from __future__ import annotations

import warnings

import torch

__all__ = ["extension_loaded", "has_kernel", "load_error", "warn_fallback_once"]

_LOAD_ERROR: str | None = None
try:
    from blendmask import _C  # noqa: F401  (import registers the ops)
except ImportError as exc:  # not built, or built against another torch
    _LOAD_ERROR = f"{type(exc).__name__}: {exc}"

_WARNED = False


def extension_loaded() -> bool:
    """True when ``blendmask._C`` imported and the ``blendmask::blend`` schema exists."""
    return _LOAD_ERROR is None


def load_error() -> str | None:
    """Why the extension failed to import, or None."""
    return _LOAD_ERROR


def has_kernel(device_type: str) -> bool:
    """True when the loaded extension has a ``blendmask::blend`` kernel for ``device_type`` ("cpu", "cuda", ...)."""
    if not extension_loaded():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("blendmask::blend", key)


def warn_fallback_once(device_type: str) -> None:
    """Warn, once per process, that ``blend`` runs the unfused reference instead of the fused op."""
    global _WARNED
    if _WARNED:
        return
    _WARNED = True
    reason = load_error() or f"it has no kernel for device '{device_type}'"
    warnings.warn(
        f"blendmask: the compiled blender op is unavailable ({reason}); falling back to the slower "
        "pure-PyTorch blend_reference. Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=3,
    )
