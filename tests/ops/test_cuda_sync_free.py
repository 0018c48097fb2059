"""The CUDA op never synchronises with the host, and its documented behaviour on a GPU.

Without a GPU the source-level test checks that nothing on the CUDA path waits for the device
(no ``.item()``, no copy to the host, no host-side roi value check); with a GPU the op is
captured in a CUDA graph, a bad roi gives a NaN mask and no gradient, and the backward raises
PyTorch's nondeterminism alert under ``torch.use_deterministic_algorithms(True)``.
"""
from __future__ import annotations

import os
import re

import pytest
import torch

from blendmask import _extension
from blendmask.ops import blend, blend_reference

from tests.helpers.blender_inputs import make_inputs
from tests.helpers.paths import REPO

CUDA_SOURCE = os.path.join(REPO, "csrc", "cuda", "blender_cuda.cu")
HOST_SYNC = re.compile(
    r"\.item\s*[<(]|\.cpu\s*\(|kCPU|\.tolist\s*\(|cudaDeviceSynchronize|cudaStreamSynchronize|cudaMemcpy\b|"
    r"\.to\s*\(\s*at::Device"
)
needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and _extension.has_kernel("cuda")), reason="needs a GPU and the CUDA build"
)


def _cuda_sources() -> dict[str, str]:
    """blender_cuda.cu and the project headers it includes, recursively."""
    found, todo = {}, [CUDA_SOURCE]
    while todo:
        path = os.path.normpath(todo.pop())
        if path in found or not os.path.exists(path):
            continue
        with open(path) as f:
            found[path] = f.read()
        for name in re.findall(r'#include\s+"([^"]+)"', found[path]):
            todo.append(os.path.join(os.path.dirname(path), name))
    return found


def _code(text: str) -> str:
    """The source without comments."""
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


def test_cuda_path_has_no_host_synchronisation():
    sources = _cuda_sources()
    assert any(p.endswith("blender_math.h") for p in sources) and any(p.endswith("blender.h") for p in sources)
    for path, text in sources.items():
        hits = [m.group(0) for m in HOST_SYNC.finditer(_code(text))]
        assert not hits, f"{os.path.relpath(path, REPO)} synchronises with the host: {hits}"
    cuda = sources[os.path.normpath(CUDA_SOURCE)]
    calls = re.findall(r"prepare_call\((.*?)\);", cuda, flags=re.S)
    assert len(calls) == 2, "the CUDA forward and backward each run the shared prologue once"
    for call in calls:
        assert "/*check_values=*/false" in call, "the CUDA backend must not check roi values on the host"
    kernels = sources[os.path.normpath(os.path.join(REPO, "csrc", "cuda", "blender_cuda_kernels.cuh"))]
    assert kernels.count("math::roi_problem(") == 2, "both CUDA kernels validate rois on the device"
    assert 'alertNotDeterministic("blend_backward_cuda")' in cuda


@needs_gpu
def test_cuda_graph_capture_and_replay():
    bases, attns, rois = (t.cuda() for t in make_inputs(n=2, k=4, h=20, w=24, d=6, m=7, dtype=torch.float32))
    attns.requires_grad_(True)
    blend(bases, attns, rois, output_size=14).sum().backward()  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = blend(bases, attns.detach(), rois, output_size=14)
    new_attns = torch.randn_like(attns)
    attns.data.copy_(new_attns)
    graph.replay()
    torch.testing.assert_close(out, blend(bases, new_attns, rois, output_size=14))


@needs_gpu
def test_cuda_bad_roi_gives_nan_mask_and_no_gradient():
    bases, attns, rois = (t.cuda() for t in make_inputs(n=2, k=4, h=20, w=24, d=4, m=7, dtype=torch.float32))
    rois[1, 2] = float("nan")
    rois[2, 0] = 7.0  # batch index out of range
    b = bases.clone().requires_grad_(True)
    a = attns.clone().requires_grad_(True)
    out = blend(b, a, rois, output_size=14)
    assert out[1].isnan().all() and out[2].isnan().all()
    good = [0, 3]
    torch.testing.assert_close(out[good], blend_reference(bases, attns, rois[good], output_size=14))
    grad = torch.ones_like(out)
    gb, ga = torch.autograd.grad(out, (b, a), grad)
    assert ga[1].abs().max() == 0 and ga[2].abs().max() == 0 and gb.isfinite().all()


@needs_gpu
def test_cuda_backward_raises_the_nondeterminism_alert():
    bases, attns, rois = (t.cuda() for t in make_inputs(n=1, k=2, h=8, w=8, d=2, m=3, dtype=torch.float32))
    attns.requires_grad_(True)
    out = blend(bases, attns, rois, output_size=7)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="blend_backward_cuda"):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
