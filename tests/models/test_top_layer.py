"""The top layer evaluated at the read locations only (blendmask.models.top_layer): equal to the
dense 3x3 convolution read at those locations, in value and gradient, and the model's losses and
detections equal to those of the dense top layer AdelaiDet runs; its gradient is the same bits at
two threads however the threads are scheduled."""
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blendmask.config import get_config
from blendmask.models import build_model
from blendmask.models.fcos.fcos import flatten_levels
from blendmask.models.top_layer import TopLayer, neighbour_indices


def _dense_at(layer: TopLayer, towers, locations):
    """The reference: the dense convolution on every level, read at ``locations``."""
    return flatten_levels([layer(t) for t in towers])[locations]


def _towers(sizes, n=2, c=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, h, w, generator=g, dtype=dtype) for h, w in sizes]


def _layer(c=5, out=7, dtype=torch.float64, seed=1):
    torch.manual_seed(seed)
    layer = TopLayer(c, out).to(dtype)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    return layer


def test_neighbour_indices_of_a_small_level_pair():
    table = neighbour_indices([(2, 2), (1, 1)], torch.device("cpu"))
    assert table.shape == (5, 9)
    # level 0, location (0, 0): neighbours (0,0) (0,1) (1,0) (1,1) inside, the rest outside
    assert table[0].tolist() == [-1, -1, -1, -1, 0, 1, -1, 2, 3]
    # level 0, location (1, 1)
    assert table[3].tolist() == [0, 1, -1, 2, 3, -1, -1, -1, -1]
    # level 1 (one location, numbered 4): only its centre is inside
    assert table[4].tolist() == [-1, -1, -1, -1, 4, -1, -1, -1, -1]


@pytest.mark.parametrize("channels_last", [False, True])
def test_at_equals_the_dense_convolution_at_every_location(channels_last):
    sizes = [(6, 5), (3, 3), (1, 4), (1, 1)]
    towers = _towers(sizes)
    if channels_last:
        towers = [t.contiguous(memory_format=torch.channels_last) for t in towers]
    layer = _layer()
    every = torch.arange(2 * sum(h * w for h, w in sizes))
    torch.testing.assert_close(layer.at(towers, every), _dense_at(layer, towers, every), rtol=1e-12, atol=1e-12)


def test_at_gradients_equal_the_dense_convolution_gradients():
    sizes = [(5, 4), (2, 3)]
    locations = torch.tensor([0, 3, 19, 20, 25, 25, 26, 45, 51])  # borders, both images, a repeat
    grads = []
    for fn in (lambda layer, towers: layer.at(towers, locations), lambda layer, towers: _dense_at(layer, towers, locations)):
        towers = [t.requires_grad_() for t in _towers(sizes)]
        layer = _layer()
        out = fn(layer, towers)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype))
        grads.append([layer.weight.grad, layer.bias.grad] + [t.grad for t in towers])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_at_no_locations_is_empty_and_keeps_the_weights_in_the_graph():
    layer = _layer()
    out = layer.at(_towers([(2, 2)]), torch.zeros(0, dtype=torch.int64))
    assert out.shape == (0, 7)
    out.sum().backward()
    assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum()) == 0.0


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=4),
       n=st.integers(1, 3), seed=st.integers(0, 1000))
def test_fuzz_at_equals_the_dense_convolution(sizes, n, seed):
    towers = _towers(sizes, n=n, c=3, seed=seed)
    layer = _layer(c=3, out=4, seed=seed)
    total = n * sum(h * w for h, w in sizes)
    locations = torch.randint(0, total, (min(total, 12),), generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(layer.at(towers, locations), _dense_at(layer, towers, locations), rtol=1e-12, atol=1e-12)


def test_at_gradient_is_bit_identical_at_two_threads_on_a_busy_machine():
    # Overlapping 3x3 neighbourhoods read the same tower rows many times. Indexing
    # (``table[rows]``) would send their gradients back through index_put_(accumulate=True),
    # which PyTorch runs with atomic float adds when it has >= 32768 elements and > 1 thread:
    # the order of the adds, so the rounding, then follows the threads' timing.
    g = torch.Generator().manual_seed(0)
    towers = [torch.randn(2, 128, h, w, generator=g).contiguous(memory_format=torch.channels_last)
              for h, w in [(24, 24), (12, 12), (6, 6)]]
    locations = torch.randint(0, 2 * (24 * 24 + 12 * 12 + 6 * 6), (400,), generator=g)
    torch.manual_seed(0)
    layer = TopLayer(128, 196)
    grad_out = torch.randn(400, 196, generator=g)
    threads = torch.get_num_threads()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # steals time from one of the two threads
    try:
        torch.set_num_threads(2)
        grads = []
        for _ in range(20):
            leaves = [t.detach().requires_grad_() for t in towers]
            layer.at(leaves, locations).backward(grad_out)
            grads.append([t.grad for t in leaves])
    finally:
        torch.set_num_threads(threads)
        busy.kill()
        busy.wait()
    differing = [i for i, run in enumerate(grads) if not all(torch.equal(a, b) for a, b in zip(grads[0], run))]
    assert differing == []


def _model():
    torch.manual_seed(0)
    cfg = get_config("lite_mobilenet_v2", {"input.min_size_train": (64,), "input.max_size_train": 96,
                                           "input.min_size_test": 64, "input.max_size_test": 96,
                                           "model.num_classes": 3})
    model = build_model(cfg).double()
    with torch.no_grad():
        model.top_layer.weight.normal_(std=0.05)
    return model


def _use_dense_top_layer(model):
    """Patch ``model.attentions`` to the dense formulation (AdelaiDet's): the top layer on every
    location of every level, then read at the locations."""
    model.attentions = lambda head, locations: _dense_at(model.top_layer, head.bbox_towers, locations)


def _targets():
    masks = torch.zeros(2, 64, 80, dtype=torch.uint8)
    masks[0, 4:40, 6:50] = 1
    masks[1, 30:62, 40:79] = 1
    return [{"boxes": torch.tensor([[6.0, 4.0, 50.0, 40.0], [40.0, 30.0, 79.0, 62.0]], dtype=torch.float64),
             "labels": torch.tensor([0, 2]), "masks": masks}]


def test_training_losses_and_gradients_equal_the_dense_top_layer():
    image = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(3), dtype=torch.float64)]
    runs = []
    for dense in (False, True):
        model = _model().train()
        if dense:
            _use_dense_top_layer(model)
        losses = model(image, _targets())
        sum(losses.values()).backward()
        runs.append((losses, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (sparse_losses, sparse_grads), (dense_losses, dense_grads) = runs
    assert sparse_losses.keys() == dense_losses.keys() and float(sparse_losses["loss_mask"].detach()) > 0
    for k in dense_losses:
        torch.testing.assert_close(sparse_losses[k], dense_losses[k], rtol=1e-10, atol=1e-12)
    assert sparse_grads.keys() == dense_grads.keys() and "top_layer.weight" in dense_grads
    for k in dense_grads:
        torch.testing.assert_close(sparse_grads[k], dense_grads[k], rtol=1e-9, atol=1e-12, msg=k)


def test_detections_equal_the_dense_top_layer():
    image = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(4), dtype=torch.float64)]
    outs = []
    for dense in (False, True):
        model = _model().eval()
        model.proposal_generator.score_thresh = 0.0
        model.return_internals = True
        if dense:
            _use_dense_top_layer(model)
        with torch.no_grad():
            outs.append(model(image)[0])
    assert outs[0]["attns"].shape[0] > 1
    for k in ("boxes", "scores", "labels", "attns", "masks"):
        torch.testing.assert_close(outs[0][k], outs[1][k], rtol=1e-10, atol=1e-12, msg=k)
