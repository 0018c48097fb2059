"""Seeds of the data order: :func:`derive_seed`, shared by the samplers of
:mod:`blendmask.data.loader` and :mod:`blendmask.data.repeat_factor`."""
from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(seed: int, stream: str, n: int) -> int:
    """A 63-bit seed that is a pure function of ``(seed, stream, n)``."""
    digest = hashlib.blake2b(f"{seed}:{stream}:{n}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
