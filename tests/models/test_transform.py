"""ImageTransform: resizing, normalisation, padding, target resizing, postprocess, bad inputs, export."""
import pytest
import torch

from blendmask.models.transform import ImageTransform, postprocess_boxes, resized_size

MSRA = dict(pixel_mean=[103.53, 116.28, 123.675], pixel_std=[1.0, 1.0, 1.0], input_format="BGR")
IMAGENET = dict(pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375], input_format="RGB")


def _transform(min_train=(64,), max_train=100, min_test=64, max_test=100, div=32, stats=MSRA, **kw):
    return ImageTransform(min_size_train=min_train, max_size_train=max_train, min_size_test=min_test,
                          max_size_test=max_test, size_divisibility=div, **stats, **kw)


def _target(h, w, boxes, labels=None, mask_dtype=torch.uint8):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    masks = torch.zeros(len(boxes), h, w, dtype=mask_dtype)
    for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
        masks[i, y1:y2, x1:x2] = 1
    labels = torch.zeros(len(boxes), dtype=torch.int64) if labels is None else torch.tensor(labels)
    return {"boxes": boxes, "labels": labels, "masks": masks, "image_id": 7}


def test_resized_size_follows_resize_shortest_edge():
    assert resized_size(480, 640, 800, 1333) == (800, 1067)
    assert resized_size(100, 1000, 800, 1333) == (133, 1333)  # long side capped
    assert resized_size(30, 50, 64, 0) == (64, 107)  # no cap
    assert resized_size(30, 50, 0, 100) == (30, 50)  # disabled


def test_eval_resizes_normalises_and_pads():
    t = _transform().eval()
    images = [torch.rand(3, 30, 50), torch.rand(3, 40, 20)]
    batch, targets = t(images)
    assert targets is None
    assert batch.image_sizes == [(60, 100), (100, 50)]
    assert batch.tensors.shape == (2, 3, 128, 128)
    assert batch.tensors[0, :, 60:].abs().sum() == 0 and batch.tensors[0, :, :, 100:].abs().sum() == 0
    constant = torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1).expand(3, 32, 32)
    out = t([constant])[0].tensors[0, :, :64, :64]
    expected_bgr = torch.tensor([0.6, 0.4, 0.2]) * 255 - torch.tensor(MSRA["pixel_mean"])
    torch.testing.assert_close(out.mean((1, 2)), expected_bgr)
    rgb = _transform(stats=IMAGENET).eval()([constant])[0].tensors[0, :, :64, :64]
    expected_rgb = (torch.tensor([0.2, 0.4, 0.6]) * 255 - torch.tensor(IMAGENET["pixel_mean"])) / torch.tensor(IMAGENET["pixel_std"])
    torch.testing.assert_close(rgb.mean((1, 2)), expected_rgb)


def test_normalisation_follows_the_pixel_buffers():
    """The buffers are the one source of the mean and std: changing them after construction (as
    a fixture recorded at another ``PIXEL_STD`` does) changes the batch."""
    t = _transform().eval()
    t.pixel_mean.copy_(torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1))
    t.pixel_std.copy_(torch.tensor([5.0, 4.0, 2.0]).view(3, 1, 1))
    for side in (64, 32):  # no resize (float pixels), resized (the 8-bit resize's uint8 pixels)
        constant = torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1).expand(3, side, side)
        out = t([constant])[0].tensors[0, :, :64, :64].mean((1, 2))
        bgr = torch.tensor([0.6, 0.4, 0.2]) * 255
        bgr = bgr if side == 64 else bgr.round()
        torch.testing.assert_close(out, (bgr - torch.tensor([10.0, 20.0, 30.0])) / torch.tensor([5.0, 4.0, 2.0]))


def test_no_resize_when_min_size_is_zero_and_divisibility_one():
    t = _transform(min_test=0, div=1).eval()
    batch, _ = t([torch.rand(3, 33, 17)])
    assert batch.image_sizes == [(33, 17)] and batch.tensors.shape == (1, 3, 33, 17)


def test_training_picks_each_min_size_and_resizes_targets():
    torch.manual_seed(0)
    t = _transform(min_train=(40, 60), max_train=1000).train()
    image = torch.rand(3, 20, 30)
    target = _target(20, 30, [[3, 2, 13, 12]], mask_dtype=torch.bool)
    seen = set()
    for _ in range(20):
        batch, (out,) = t([image], [target])
        (h, w), = batch.image_sizes
        seen.add(h)
        scale = h / 20
        assert w == round(30 * scale)
        torch.testing.assert_close(out["boxes"], torch.tensor([[3, 2, 13, 12]]) * scale)
        assert out["masks"].dtype == torch.uint8 and out["masks"].shape == (1, h, w)
        assert out["masks"].sum() == pytest.approx(100 * scale * scale, rel=0.05)
        assert out["image_id"] == 7 and out["labels"].tolist() == [0]
    assert seen == {40, 60}
    assert target["boxes"].tolist() == [[3, 2, 13, 12]]  # inputs are not modified


def test_empty_targets_are_resized_too():
    t = _transform().train()
    batch, (out,) = t([torch.rand(3, 30, 50)], [_target(30, 50, [])])
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 60, 100)


def test_postprocess_boxes_undoes_the_resize():
    t = _transform().eval()
    boxes = torch.tensor([[10.0, 5.0, 30.0, 15.0], [0.0, 0.0, 50.0, 30.0]])
    batch, (out,) = t([torch.rand(3, 30, 50)], [_target(30, 50, boxes.tolist())])
    back = t.postprocess_boxes(out["boxes"], batch.image_sizes[0], (30, 50))
    torch.testing.assert_close(back, boxes)
    with pytest.raises(ValueError, match=r"boxes must have shape \(n, 4\)"):
        postprocess_boxes(torch.zeros(4), (10, 10), (20, 20))


@pytest.mark.parametrize("images, targets, error, match", [
    (torch.rand(3, 10, 10), None, ValueError, "wrap a single image in a list"),
    ([], None, ValueError, "non-empty list"),
    ([torch.rand(10, 10)], None, ValueError, r"images\[0\] must have shape \(3, H, W\)"),
    ([torch.rand(4, 10, 10)], None, ValueError, r"images\[0\] must have shape \(3, H, W\)"),
    ([torch.rand(3, 0, 10)], None, ValueError, r"H, W > 0"),
    ([torch.randint(0, 255, (3, 10, 10), dtype=torch.uint8)], None, TypeError, r"float tensor.*uint8"),
    ([torch.full((3, 10, 10), float("nan"))], None, ValueError, "NaN or inf"),
    ([torch.rand(3, 10, 10) * 255], None, ValueError, r"\[0, 1\].*divide 0-255"),
    ([torch.rand(3, 10, 10)] * 2, [_target(10, 10, [[1, 1, 5, 5]])], ValueError, "2 images but 1 targets"),
    ([torch.rand(3, 10, 10)], [_target(10, 10, [[5, 1, 5, 5]])], ValueError, r"boxes'\]\[0\].*degenerate"),
    ([torch.rand(3, 10, 10)], [_target(10, 10, [[1, 1, 5, 5]], labels=[3])], ValueError, r"labels'\] must lie in \[0, 3\)"),
    ([torch.rand(3, 10, 10)], [_target(10, 10, [[1, 1, 5, 5]], labels=[0.5])], ValueError, "integer tensor"),
    ([torch.rand(3, 10, 10)], [{**_target(10, 10, [[1, 1, 5, 5]]), "masks": torch.zeros(1, 9, 10, dtype=torch.uint8)}],
     ValueError, r"masks'\] must have shape \(n, H, W\) = \(1, 10, 10\)"),
    ([torch.rand(3, 10, 10)], [{**_target(10, 10, [[1, 1, 5, 5]]), "masks": torch.zeros(1, 10, 10)}],
     ValueError, "uint8 or bool"),
    ([torch.rand(3, 10, 10)], [{"labels": torch.zeros(1, dtype=torch.int64)}], ValueError, "needs a tensor 'boxes'"),
    ([torch.rand(3, 10, 10)], [{"boxes": torch.zeros(1, 5), "labels": torch.zeros(1, dtype=torch.int64)}],
     ValueError, r"shape \(n, 4\)"),
])
def test_bad_inputs_raise_clear_errors(images, targets, error, match):
    t = _transform(num_classes=3).train()
    with pytest.raises(error, match=match):
        t(images, targets)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="input_format"):
        _transform(stats=dict(MSRA, input_format="BRG"))
    with pytest.raises(ValueError, match="size_divisibility"):
        _transform(div=0)
    with pytest.raises(ValueError, match="min_size_train"):
        _transform(min_train=())


def test_eval_transform_exports_with_torch_export():
    t = _transform().eval()

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.t = t

        def forward(self, image):
            return self.t([image])[0].tensors

    image = torch.rand(3, 30, 50)
    exported = torch.export.export(Wrapper(), (image,))
    torch.testing.assert_close(exported.module()(image), Wrapper()(image))


@pytest.mark.parametrize("size, new_size", [
    ((120, 160), (60, 80)), ((97, 131), (41, 55)), ((333, 500), (200, 300)), ((300, 40), (37, 5)),  # shrinking
    ((50, 70), (123, 172)), ((64, 64), (64, 200)), ((17, 23), (40, 54)),  # enlarging
])
def test_resize_matches_pil_bilinear_on_uint8_like_detectron2(size, new_size):
    """detectron2's ResizeTransform resizes uint8 images with PIL's BILINEAR (antialiased when
    shrinking): ours agrees to within 1 grey level, and on nearly every pixel exactly."""
    import numpy as np
    from PIL import Image

    from blendmask.models.transform import resize_image

    (h, w), (nh, nw) = size, new_size
    pixels = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    pil = torch.from_numpy(np.asarray(Image.fromarray(pixels).resize((nw, nh), Image.BILINEAR)).copy()).permute(2, 0, 1)
    ours = resize_image(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255, (nh, nw)) * 255
    assert ours.shape == (3, nh, nw)
    diff = (ours - pil.float()).abs()
    assert diff.max() <= 1.0 + 1e-4
    assert (diff < 1e-4).float().mean() > 0.85  # measured: 0.90 at the 8x shrink, >= 0.99 otherwise


def test_resized_size_rounds_like_detectron2():
    """detectron2's get_output_shape: short side exact, long side scale * side, a second scale
    when over max_size, then int(x + 0.5)."""
    def detectron2(h, w, short, max_size):  # its arithmetic, restated
        scale = short / min(h, w)
        nh, nw = (short, scale * w) if h < w else (scale * h, short)
        if max(nh, nw) > max_size:
            nh, nw = nh * max_size / max(nh, nw), nw * max_size / max(nh, nw)
        return int(nh + 0.5), int(nw + 0.5)

    cases = [(h, w, short, 1333) for h in range(3, 700, 37) for w in range(5, 1400, 53) for short in (640, 800)]
    cases += [(1, 3, 1, 2), (2, 5, 1, 1000), (3, 8, 2, 1000)]  # long sides on .5 boundaries: 2.5, 2.5 and 5.333
    assert all(resized_size(*c) == detectron2(*c) for c in cases)
    assert resized_size(2, 5, 1, 1000) == (1, 3)  # 2.5 rounds up


@pytest.mark.parametrize("stats", [MSRA, IMAGENET], ids=["BGR", "RGB"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_equals_resize_then_normalise_then_pad(stats, dtype):
    """The transform writes the normalised uint8 resize straight into the padded batch; it equals the
    composition it replaces (resize_image -> (x * 255 - mean) / std in channel order -> zero pad),
    within float rounding, for resized images and for an image kept at its size."""
    import torch.nn.functional as F

    from blendmask.models.transform import resize_image

    t = _transform(min_test=64, max_test=100, stats=stats).eval()
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 30, 50, generator=g, dtype=dtype), torch.rand(3, 120, 64, generator=g, dtype=dtype),
              torch.rand(3, 64, 90, generator=g, dtype=dtype)]  # the last one is not resized
    batch, _ = t(images)
    assert batch.tensors.dtype == dtype
    mean = torch.tensor(stats["pixel_mean"], dtype=dtype).view(3, 1, 1)
    std = torch.tensor(stats["pixel_std"], dtype=dtype).view(3, 1, 1)
    for i, (image, (h, w)) in enumerate(zip(images, batch.image_sizes)):
        pixels = resize_image(image, (h, w)) if (h, w) != tuple(image.shape[-2:]) else image
        if i == 2:
            assert (h, w) == (64, 90)
        pixels = pixels * 255.0
        if stats["input_format"] == "BGR":
            pixels = pixels.flip(0)
        expected = F.pad((pixels - mean) / std, (0, batch.tensors.shape[-1] - w, 0, batch.tensors.shape[-2] - h))
        torch.testing.assert_close(batch.tensors[i], expected, rtol=0, atol=1e-4)
