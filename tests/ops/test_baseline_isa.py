"""The baseline-ISA copy of the CPU kernels (what runs on CPUs without AVX2+FMA).

The CPU kernels are compiled twice and the AVX2 copy is picked at run time, so the rest of the
op tests exercise only that copy on this machine. ``ATEN_CPU_CAPABILITY=default`` forces the
baseline copy; it must be read before the first call, hence a subprocess.
"""
import json
import os
import subprocess
import sys

import pytest

from blendmask import _extension

pytestmark = pytest.mark.skipif(not _extension.extension_loaded(), reason=f"blendmask._C not built: {_extension.load_error()}")

SCRIPT = r"""
import json, torch
from blendmask.ops import blend, blend_reference

errors = []
g = torch.Generator().manual_seed(0)
cases = [
    dict(k=4, m=14, r=28, interp="bilinear", aligned=True, ratio=1),
    dict(k=2, m=7, r=17, interp="nearest", aligned=False, ratio=2),
    dict(k=1, m=1, r=9, interp="bilinear", aligned=True, ratio=0),
]
for dtype in (torch.float64, torch.float32):
    for c in cases:
        bases = torch.randn(2, c["k"], 23, 31, dtype=dtype, generator=g)
        attns = 2 * torch.randn(5, c["k"], c["m"], c["m"], dtype=dtype, generator=g)
        rois = torch.tensor([[0, 8, 6, 90, 70], [1, -20, -10, 40, 30], [0, 100, 80, 140, 120],
                             [1, 30, 30, 30, 30], [0, 0, 0, 124, 92]], dtype=dtype)
        grad = torch.randn(5, c["r"], c["r"], dtype=dtype, generator=g)
        args = (c["r"], 0.25, c["ratio"], c["aligned"], c["interp"])
        results = []
        for fn in (blend, blend_reference):
            b, a = bases.clone().requires_grad_(), attns.clone().requires_grad_()
            out = fn(b, a, rois, *args)
            gb, ga = torch.autograd.grad(out, (b, a), grad)
            results.append((out.detach(), gb, ga))
        errors.append({
            "dtype": str(dtype),
            "errors": [float((x - y).abs().max()) for x, y in zip(*results)],
        })
print(json.dumps(errors))
"""


def _run(capability):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("capability", ["default", None], ids=["baseline", "auto"])
def test_cpu_kernel_copy_matches_reference(capability):
    for case in _run(capability):
        tolerance = 1e-10 if case["dtype"] == "torch.float64" else 2e-5
        assert max(case["errors"]) < tolerance, case
