"""The COCO fuzzer (worker: ``tests/helpers/coco_fuzz_worker.py``, whose docstring lists the mutations and the
pass rule). Each run is one subprocess under an address-space limit and a per-example timeout, so
a crash, a hang or runaway memory fails the test instead of killing pytest.

The default run covers a fixed, reproducible set of examples (hypothesis ``derandomize``); the
``-m slow`` run goes deep with a random seed (``FUZZ_SEED`` to repeat one, ``FUZZ_EXAMPLES`` to
change the count) and prints it.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import subprocess_env

WORKER = "tests.helpers.coco_fuzz_worker"


def _run(workdir: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", WORKER, "--workdir", str(workdir), *args], env=subprocess_env(),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the fuzzer hung past {timeout} s; last case in {workdir / 'current'}: {_case(workdir)}\n"
                    f"{(e.stdout or b'')[-3000:]!r}")


def _case(workdir: Path) -> str:
    path = workdir / "current" / "mutations.json"
    return path.read_text() if path.is_file() else "(none written)"


def _summary(workdir: Path, proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, (
        f"fuzzer failed with exit status {proc.returncode}; case in {workdir / 'current'}: {_case(workdir)}\n"
        f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    )
    line = next(line for line in proc.stdout.splitlines() if line.startswith("FUZZ-SUMMARY "))
    return json.loads(line[len("FUZZ-SUMMARY "):])


def test_fuzz_coco_files_and_images(tmp_path):
    summary = _summary(tmp_path, _run(tmp_path, "--examples", "150", timeout=400))
    print("fuzz summary:", summary)
    assert summary["examples"] == 150
    assert summary["ok"] >= 30 and summary["refused"] >= 30  # both paths are exercised


@pytest.mark.slow
def test_fuzz_coco_deep(tmp_path):
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2 ** 32)))
    examples = os.environ.get("FUZZ_EXAMPLES", "3000")
    print(f"FUZZ_SEED={seed} FUZZ_EXAMPLES={examples}")
    summary = _summary(tmp_path, _run(tmp_path, "--examples", examples, "--seed", str(seed), timeout=7200))
    print("fuzz summary:", summary)


@pytest.mark.parametrize("kind,evidence", [
    ("crash", None),
    ("memory", "MemoryError"),
    ("hang", "ExampleTimeout"),
    ("c_hang", "Timeout (0:00:06)!"),
    ("traceback", "KeyError"),
])
def test_the_harness_catches_crashes_memory_hangs_and_tracebacks(tmp_path, kind, evidence):
    """The net must be able to fail: a runner that segfaults, allocates 3 GiB, spins (in Python or
    in C code holding the GIL) or raises a bare KeyError fails the run, and the case that did it is
    left on disk."""
    proc = _run(tmp_path, "--examples", "2", "--self-test", kind, "--timeout", "1", timeout=120)
    if evidence is None:
        assert proc.returncode == -signal.SIGSEGV
    else:
        assert proc.returncode == 1 and evidence in proc.stdout + proc.stderr
    assert (tmp_path / "current" / "mutations.json").is_file() and (tmp_path / "current" / "ann.json").is_file()
