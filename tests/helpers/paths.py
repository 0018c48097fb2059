"""Where things are, for tests that read repository files or run Python in a subprocess."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


def subprocess_env(**overrides: str) -> dict[str, str]:
    """This process's environment with the repository first on ``PYTHONPATH`` (so a child Python
    imports this tree's ``blendmask`` and ``tests.helpers``), updated with ``overrides``."""
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": pythonpath, **overrides}
