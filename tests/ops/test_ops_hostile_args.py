"""The blender op refuses, by name, a fractional batch index and a sampling_ratio beyond reason,
with the extension (C++ checks, every backend) and without it (Python checks of the reference)."""
import pytest
import torch

from blendmask import _extension, ops
from blendmask.ops import MAX_SAMPLING_RATIO, blend, blend_reference


def _inputs(batch_index):
    bases = torch.rand(2, 4, 16, 16)
    attns = torch.rand(1, 4, 7, 7)
    rois = torch.tensor([[batch_index, 2.0, 2.0, 40.0, 40.0]])
    return bases, attns, rois


@pytest.fixture(params=["extension", "python"])
def op(request, monkeypatch):
    if request.param == "extension":
        if not _extension.extension_loaded():
            pytest.skip("blendmask._C is not built")
        return blend
    monkeypatch.setattr(ops._extension, "extension_loaded", lambda: False)
    monkeypatch.setattr(ops, "_FUSED_DEVICE_TYPES", frozenset())
    return blend_reference


@pytest.mark.parametrize("batch_index", [0.5, 1.9999, -0.25])
def test_a_fractional_batch_index_is_refused(op, batch_index):
    with pytest.raises(ValueError, match=r"rois\[0\] has batch index .*not an integer in \[0, 2\)"):
        op(*_inputs(batch_index), output_size=8)


@pytest.mark.parametrize("sampling_ratio", [MAX_SAMPLING_RATIO + 1, 2**31 - 1])
def test_an_absurd_sampling_ratio_is_refused(op, sampling_ratio):
    with pytest.raises(ValueError, match=f"sampling_ratio must be .*{MAX_SAMPLING_RATIO}.*got {sampling_ratio}"):
        op(*_inputs(1.0), output_size=8, sampling_ratio=sampling_ratio)


def test_integer_batch_indices_and_the_largest_sampling_ratio_run(op):
    out = op(*_inputs(1.0), output_size=4, sampling_ratio=MAX_SAMPLING_RATIO)
    assert out.shape == (1, 4, 4) and torch.isfinite(out).all()
