"""The blender's torch.library registration: opcheck, torch.compile, torch.export, meta."""
from __future__ import annotations

import pytest
import torch

from blendmask import _extension
from blendmask.ops import blend, blend_reference

from tests.helpers.blender_inputs import make_inputs

pytestmark = pytest.mark.skipif(not _extension.extension_loaded(), reason=f"blendmask._C not built: {_extension.load_error()}")

CONFIGS = [
    (14, 0.25, 1, True, "bilinear"),
    (7, 0.25, 2, False, "nearest"),
    (9, 0.5, 0, True, "nearest"),
    (7, 0.25, 1, True, "bilinear", "sigmoid", "bilinear"),
    (9, 0.25, 0, True, "nearest", "softmax", "nearest"),
    (5, 0.5, 2, False, "bilinear", "sigmoid", "nearest"),
]


def _blend_samples():
    for i, config in enumerate(CONFIGS):
        for requires_grad in (False, True):
            bases, attns, rois = make_inputs(n=2, k=3, h=10, w=12, d=4, m=3, seed=i)
            bases.requires_grad_(requires_grad)
            attns.requires_grad_(requires_grad)
            yield (bases, attns, rois, *config)
    bases, attns, rois = make_inputs(n=1, k=2, h=6, w=6, d=0, m=2, dtype=torch.float32)
    yield (bases, attns, rois, 5, 0.25, 1, True, "bilinear")


@pytest.mark.parametrize("args", list(_blend_samples()), ids=lambda a: f"R{a[3]}-{'-'.join(a[7:])}-grad{a[0].requires_grad}-D{a[2].shape[0]}")
def test_opcheck_blend(args):
    torch.library.opcheck(torch.ops.blendmask.blend.default, args)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"R{c[0]}-{'-'.join(c[4:])}")
def test_opcheck_blend_backward(config):
    bases, attns, rois = make_inputs(n=2, k=3, h=10, w=12, d=4, m=3)
    grad = torch.randn(4, config[0], config[0], dtype=torch.float64)
    torch.library.opcheck(torch.ops.blendmask.blend_backward.default, (grad, bases, attns, rois, *config))


def test_meta_tensors_give_shapes():
    bases, attns, rois = (t.to("meta") for t in make_inputs(n=2, k=4, d=5, m=7))
    out = blend(bases, attns, rois, output_size=56)
    assert out.shape == (5, 56, 56) and out.device.type == "meta"


def test_torch_compile_fullgraph_forward_backward():
    torch._dynamo.reset()

    def loss_fn(bases, attns, rois):
        masks = blend(bases, attns, rois, output_size=14, sampling_ratio=1, aligned=True, top_interp="bilinear")
        return masks.sigmoid().mean()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    bases, attns, rois = make_inputs(n=2, k=4, h=12, w=14, d=5, m=7, dtype=torch.float32)
    grads = []
    for fn in (compiled, loss_fn):
        b = bases.clone().requires_grad_(True)
        a = attns.clone().requires_grad_(True)
        loss = fn(b, a, rois)
        loss.backward()
        grads.append((loss.detach(), b.grad, a.grad))
    for x, y in zip(*grads):
        torch.testing.assert_close(x, y)


def test_torch_compile_dynamic_shapes_forward_backward():
    """Symbolic N, Hb, Wb and D: the C++ Meta kernel checks the contract without specialising them."""
    torch._dynamo.reset()

    def loss_fn(bases, attns, rois):
        return blend(bases, attns, rois, output_size=9, sampling_ratio=2).square().mean()

    compiled = torch.compile(loss_fn, fullgraph=True, dynamic=True, backend="aot_eager")
    for n, h, w, d in [(2, 12, 14, 5), (3, 9, 17, 8), (1, 20, 11, 2)]:
        bases, attns, rois = make_inputs(n=n, k=3, h=h, w=w, d=d, m=4, dtype=torch.float32, seed=d)
        results = []
        for fn in (compiled, loss_fn):
            b = bases.clone().requires_grad_(True)
            a = attns.clone().requires_grad_(True)
            loss = fn(b, a, rois)
            loss.backward()
            results.append((loss.detach(), b.grad, a.grad))
        for x, y in zip(*results):
            torch.testing.assert_close(x, y)
    with pytest.raises(Exception, match="K="):
        bases, attns, rois = make_inputs(n=2, k=3, h=10, w=10, d=4, m=4, dtype=torch.float32)
        compiled(bases, attns[:, :2], rois)


def test_torch_compile_inductor_forward():
    torch._dynamo.reset()
    fn = torch.compile(lambda b, a, r: blend(b, a, r, output_size=14).relu(), fullgraph=True)
    bases, attns, rois = make_inputs(n=2, k=2, h=10, w=10, d=3, m=2, dtype=torch.float32)
    torch.testing.assert_close(fn(bases, attns, rois), blend_reference(bases, attns, rois, output_size=14).relu())


def test_torch_export_keeps_blend_op():
    class MaskHead(torch.nn.Module):
        def forward(self, bases, attns, rois):
            return blend(bases, attns, rois, output_size=14).sigmoid()

    bases, attns, rois = make_inputs(n=1, k=4, h=10, w=12, d=3, m=7, dtype=torch.float32)
    exported = torch.export.export(MaskHead(), (bases, attns, rois))
    targets = [node.target for node in exported.graph.nodes if node.op == "call_function"]
    assert torch.ops.blendmask.blend.default in targets
    torch.testing.assert_close(exported.module()(bases, attns, rois), MaskHead()(bases, attns, rois))
