"""The blender under autocast (csrc/blender_autocast.cpp): features are brought to the wider of
their two dtypes, never narrowed; rois are never rounded."""
from __future__ import annotations

import pytest
import torch

from blendmask import _extension
from blendmask.ops import blend, blend_reference

from tests.helpers.blender_inputs import make_inputs

pytestmark = pytest.mark.skipif(not _extension.extension_loaded(), reason=f"blendmask._C not built: {_extension.load_error()}")

CPU_BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def _inputs():
    bases, attns, _ = make_inputs(n=2, k=4, h=300, w=320, d=3, m=7, dtype=torch.float32)
    rois = torch.tensor([[0, 1000.3, 1011.7, 1190.6, 1150.2], [1, 1030.1, 900.45, 1270.9, 1190.3],
                         [0, 10.3, 20.7, 300.2, 250.1]], dtype=torch.float32)
    return bases, attns, rois


@pytest.mark.parametrize("narrow", ["bases", "attns"])
def test_mixed_feature_dtypes_are_widened(narrow):
    """bf16 bases (a conv under autocast) next to float32 attns: both run in float32."""
    bases, attns, rois = _inputs()
    if narrow == "bases":
        bases = bases.bfloat16()
    else:
        attns = attns.bfloat16()
    with pytest.raises(ValueError, match="share one dtype"):
        blend(bases, attns, rois, output_size=14)  # outside autocast: the contract refuses the mix
    with torch.autocast(**CPU_BF16):
        out = blend(bases, attns, rois, output_size=14)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, blend(bases.float(), attns.float(), rois, output_size=14), rtol=0, atol=0)


def test_half_features_stay_half_and_rois_are_not_rounded():
    bases, attns, rois = _inputs()
    bases, attns = bases.bfloat16(), attns.bfloat16()
    with torch.autocast(**CPU_BF16):
        out = blend(bases, attns, rois, output_size=14, sampling_ratio=2)
    assert out.dtype == torch.bfloat16
    exact = blend(bases, attns, rois, output_size=14, sampling_ratio=2)
    torch.testing.assert_close(out, exact, rtol=0, atol=0)
    rounded = blend(bases, attns, rois.bfloat16(), output_size=14, sampling_ratio=2)
    assert not torch.equal(rounded, exact), "the test boxes must be sensitive to bf16 rounding"


def test_gradients_flow_through_the_autocast_casts():
    bases, attns, rois = _inputs()
    b = bases.bfloat16().requires_grad_(True)
    a = attns.clone().requires_grad_(True)
    with torch.autocast(**CPU_BF16):
        out = blend(b, a, rois, output_size=14)
    out.sum().backward()
    assert b.grad.dtype == torch.bfloat16 and a.grad.dtype == torch.float32
    b32 = bases.bfloat16().float().requires_grad_(True)
    a32 = attns.clone().requires_grad_(True)
    blend_reference(b32, a32, rois, output_size=14).sum().backward()
    torch.testing.assert_close(a.grad, a32.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.grad.float(), b32.grad, rtol=1e-2, atol=1e-2)


def test_integer_features_are_still_refused_under_autocast():
    bases, attns, rois = _inputs()
    with torch.autocast(**CPU_BF16), pytest.raises(ValueError, match="floating point"):
        blend(bases.long(), attns, rois, output_size=14)


@pytest.mark.skipif(not (torch.cuda.is_available() and _extension.has_kernel("cuda")), reason="needs a GPU and the CUDA build")
def test_cuda_autocast_fp16():
    bases, attns, rois = (t.cuda() for t in _inputs())
    with torch.autocast("cuda", dtype=torch.float16):
        out = blend(bases.half(), attns, rois, output_size=14)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, blend(bases.half().float(), attns, rois, output_size=14), rtol=0, atol=0)
