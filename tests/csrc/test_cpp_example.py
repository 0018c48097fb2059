"""Build examples/cpp against the CMake-built op library, run it, and check its output against
the Python reference blender (and the fused op) on the same deterministic inputs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blendmask.ops import blend_reference
from tests.helpers.paths import REPO

EXAMPLE = REPO / "examples" / "cpp"

# The inputs main.cpp builds (keep the two in sync).
CASES = {
    "bilinear_aligned": dict(output_size=5, sampling_ratio=1, aligned=True, top_interp="bilinear"),
    "nearest_unaligned": dict(output_size=4, sampling_ratio=2, aligned=False, top_interp="nearest"),
}
ROIS = [[0.0, 2.5, 3.0, 30.0, 25.5], [1.0, -4.0, 6.0, 20.0, 44.0], [1.0, 12.25, 8.5, 13.0, 9.0]]


def deterministic(shape, scale: float, offset: float, amplitude: float) -> torch.Tensor:
    """``sin(scale * i + offset) * amplitude`` over the flat index, float64 -> float32 (as main.cpp)."""
    n = 1
    for s in shape:
        n *= s
    return torch.arange(n, dtype=torch.float64).mul(scale).add(offset).sin().mul(amplitude).reshape(shape).float()


def example_inputs():
    bases = deterministic((2, 4, 10, 12), 0.37, 0.0, 2.0)
    attns = deterministic((3, 4, 3, 3), 0.61, 0.5, 3.0)
    return bases, attns, torch.tensor(ROIS, dtype=torch.float32)


def parse_output(text: str) -> dict:
    """``case NAME D R R`` headers followed by ``D * R * R`` values -> {name: (D, R, R) tensor}."""
    lines = text.split("\n")
    out, i = {}, 0
    while i < len(lines) and lines[i].strip():
        tag, name, *dims = lines[i].split()
        assert tag == "case", f"unexpected line {lines[i]!r}"
        d, r1, r2 = (int(x) for x in dims)
        count = d * r1 * r2
        values = [float(x) for x in lines[i + 1:i + 1 + count] if x.strip()]
        assert len(values) == count, f"case {name}: expected {count} values, got {len(values)}"
        out[name] = torch.tensor(values, dtype=torch.float32).reshape(d, r1, r2)
        i += 1 + count
    return out


def _cmake() -> str:
    found = shutil.which("cmake", path=str(Path(sys.executable).parent)) or shutil.which("cmake")
    if found is None:
        pytest.fail("cmake is not installed (pip install cmake)")
    return found


@pytest.fixture(scope="module")
def example_output(tmp_path_factory) -> str:
    build = tmp_path_factory.mktemp("cpp_example")
    env = dict(os.environ)
    if "CUDA_HOME" not in env and Path("/usr/local/cuda").is_dir():
        env["CUDA_HOME"] = "/usr/local/cuda"
    configure = [_cmake(), "-S", str(EXAMPLE), "-B", str(build), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    if shutil.which("ninja", path=str(Path(sys.executable).parent)) or shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    for cmd in (configure, [_cmake(), "--build", str(build), "-j", "2"]):
        proc = subprocess.run(cmd, cwd=build, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    proc = subprocess.run([str(build / "blend_example")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"blend_example failed:\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_parse_output_rejects_truncated_text():
    with pytest.raises(AssertionError, match="expected 4 values"):
        parse_output("case x 1 2 2\n1.0\n2.0\n")


def test_cpp_example_matches_reference(example_output):
    got = parse_output(example_output)
    assert set(got) == set(CASES)
    bases, attns, rois = example_inputs()
    for name, kwargs in CASES.items():
        expected = blend_reference(bases, attns, rois, spatial_scale=0.25, **kwargs)
        assert got[name].shape == expected.shape == (3, kwargs["output_size"], kwargs["output_size"])
        assert got[name].abs().max() > 0.1, "degenerate example output"
        torch.testing.assert_close(got[name], expected, atol=1e-5, rtol=1e-5)
