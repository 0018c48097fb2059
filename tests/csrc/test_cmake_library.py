"""CMakeLists.txt builds the blender op into a libtorch shared library that torch.ops.load_library
can load without the Python extension, and that library computes what the reference does."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from blendmask.ops import blend_reference

from tests.helpers.blender_inputs import make_inputs, special_rois
from tests.helpers.paths import REPO

CONFIG = (28, 0.25, 1, True, "bilinear")

LOAD_AND_RUN = textwrap.dedent(
    """
    import sys
    import torch
    library, inputs_path, outputs_path = sys.argv[1:]
    torch.ops.load_library(library)
    assert "blendmask._C" not in sys.modules, "the Python extension must not be involved"
    inputs = torch.load(inputs_path)
    bases, attns, rois, grad, config = inputs["bases"], inputs["attns"], inputs["rois"], inputs["grad"], inputs["config"]
    out = torch.ops.blendmask.blend.default(bases, attns, rois, *config)
    grad_bases, grad_attns = torch.ops.blendmask.blend_backward.default(grad, bases, attns, rois, *config)
    torch.save({"out": out, "grad_bases": grad_bases, "grad_attns": grad_attns}, outputs_path)
    """
)


def _cmake() -> str:
    venv_cmake = os.path.join(os.path.dirname(sys.executable), "cmake")
    path = venv_cmake if os.path.exists(venv_cmake) else shutil.which("cmake")
    assert path, "cmake not found: install the test extras (pip install cmake)"
    return path


def _cuda_home() -> str | None:
    """The toolkit root a CUDA-built libtorch's CMake config needs (the nvcc on PATH may be a wrapper)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    from torch.utils import cpp_extension

    candidates.append(cpp_extension.CUDA_HOME)
    for root in candidates:
        if root and os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
            return root
    return None


@pytest.fixture(scope="module")
def cmake_library(tmp_path_factory) -> str:
    build = tmp_path_factory.mktemp("cmake-build")
    env = dict(os.environ)
    if torch.version.cuda is not None:
        cuda_home = _cuda_home()
        assert cuda_home, "a CUDA-built torch needs the CUDA toolkit for find_package(Torch): set CUDA_HOME"
        env["CUDA_HOME"] = cuda_home
    configure = [_cmake(), "-S", REPO, "-B", str(build), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                 "-DCMAKE_BUILD_TYPE=Release"]
    for command in (configure, [_cmake(), "--build", str(build), "--parallel", os.environ.get("MAX_JOBS", "2")]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    library = build / "libblendmask_ops.so"
    assert library.exists(), f"no {library.name} in {sorted(p.name for p in build.iterdir())}"
    return str(library)


def test_cmake_library_loads_and_matches_reference(cmake_library, tmp_path):
    bases, attns, rois = make_inputs(n=2, k=4, h=20, w=24, d=6, m=7)
    rois = torch.cat([rois, special_rois(2, 80.0, 96.0)])
    attns = torch.cat([attns, torch.randn(len(rois) - 6, 4, 7, 7, dtype=torch.float64)])
    r = CONFIG[0]
    grad = torch.randn(len(rois), r, r, dtype=torch.float64)
    torch.save({"bases": bases, "attns": attns, "rois": rois, "grad": grad, "config": CONFIG}, tmp_path / "inputs.pt")

    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_RUN, cmake_library, str(tmp_path / "inputs.pt"), str(tmp_path / "outputs.pt")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    got = torch.load(tmp_path / "outputs.pt")

    b = bases.clone().requires_grad_(True)
    a = attns.clone().requires_grad_(True)
    expected = blend_reference(b, a, rois, *CONFIG)
    expected_grads = torch.autograd.grad(expected, (b, a), grad)
    torch.testing.assert_close(got["out"], expected.detach(), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got["grad_bases"], expected_grads[0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got["grad_attns"], expected_grads[1], rtol=1e-9, atol=1e-10)
