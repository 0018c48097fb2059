"""FCOS: target assignment on hand-made boxes, GIoU values, loss normalisation, inference."""
import math

import pytest
import torch
import torch.nn.functional as F

from blendmask.models.fcos import FCOSHead
from blendmask.models.fcos.detections import class_aware_nms, clip_boxes, fcos_inference_single_image
from blendmask.models.fcos.losses import centerness_targets, fcos_losses, giou_loss, ltrb_iou_giou
from blendmask.models.fcos.targets import assign_targets, assign_targets_single, compute_locations


def _single_level(size, stride, lo=-1.0, hi=64.0):
    """Locations, strides and size ranges of one square level of ``size x size`` cells."""
    loc = compute_locations(size, size, stride)
    n = loc.shape[0]
    return loc, torch.full((n,), float(stride)), torch.tensor([[lo, hi]]).expand(n, 2)


def test_locations_are_cell_centers():
    loc = compute_locations(2, 3, 8)
    expected = torch.tensor([[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]], dtype=torch.float32)
    assert torch.equal(loc, expected)


def test_center_sampling_restricts_positives_to_radius():
    loc, strides, ranges = _single_level(8, 8)  # locations at 4, 12, ..., 60
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    labels = torch.tensor([3])
    t = assign_targets_single(loc, strides, ranges, boxes, labels, num_classes=5, center_sample=True, radius=1.5)
    pos = t.labels != 5
    # center region: 32 +- 12 = (20, 44) strictly -> x, y in {28, 36}
    expected = {(28.0, 28.0), (36.0, 28.0), (28.0, 36.0), (36.0, 36.0)}
    assert {tuple(p) for p in loc[pos].tolist()} == expected
    assert torch.all(t.labels[pos] == 3) and torch.all(t.gt_inds[pos] == 0)
    assert torch.all(t.gt_inds[~pos] == -1)
    # regression targets are the distances to the box sides
    i = int(((loc[:, 0] == 28) & (loc[:, 1] == 36)).nonzero())
    assert t.reg_targets[i].tolist() == [28.0, 36.0, 36.0, 28.0]

    t_all = assign_targets_single(loc, strides, ranges, boxes, labels, num_classes=5, center_sample=False)
    assert int((t_all.labels != 5).sum()) == 64  # every location is inside the box


def test_radius_scales_with_stride():
    loc, strides, ranges = _single_level(8, 8)
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    t = assign_targets_single(loc, strides, ranges, boxes, torch.tensor([0]), num_classes=1, radius=2.5)
    # 32 +- 20 = (12, 52): x, y in {20, 28, 36, 44}
    assert int((t.labels == 0).sum()) == 16


def test_size_ranges_pick_the_level():
    locs = [compute_locations(16, 16, 8), compute_locations(8, 8, 16)]
    big = torch.tensor([[0.0, 0.0, 128.0, 128.0]])
    small = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    n3 = locs[0].shape[0]
    for boxes, level in ((big, 1), (small, 0)):
        t = assign_targets(locs, (8, 16), (64,), [boxes], [torch.tensor([1])], num_classes=2)
        pos = (t.labels != 2).nonzero().squeeze(1)
        assert pos.numel() > 0
        on_level = (pos >= n3) if level == 1 else (pos < n3)
        assert bool(on_level.all()), f"positives must all lie on level {level}"


def test_ambiguous_location_goes_to_smallest_box():
    loc, strides, ranges = _single_level(8, 8)
    boxes = torch.tensor([[0.0, 0.0, 60.0, 60.0], [16.0, 16.0, 48.0, 48.0]])  # areas 3600 > 1024
    labels = torch.tensor([0, 1])
    t = assign_targets_single(loc, strides, ranges, boxes, labels, num_classes=2)
    i = int(((loc[:, 0] == 28) & (loc[:, 1] == 28)).nonzero())
    assert int(t.gt_inds[i]) == 1 and int(t.labels[i]) == 1
    assert t.reg_targets[i].tolist() == [12.0, 12.0, 20.0, 20.0]
    # order of the boxes does not matter
    t2 = assign_targets_single(loc, strides, ranges, boxes.flip(0), labels.flip(0), num_classes=2)
    assert int(t2.gt_inds[i]) == 0 and int(t2.labels[i]) == 1


def test_batch_targets_are_stride_normalised_and_indexed_globally():
    locs = [compute_locations(8, 8, 8)]
    boxes = [torch.tensor([[0.0, 0.0, 64.0, 64.0]]), torch.tensor([[0.0, 0.0, 32.0, 32.0], [32.0, 32.0, 64.0, 64.0]])]
    labels = [torch.tensor([0]), torch.tensor([1, 1])]
    t = assign_targets(locs, (8,), (), boxes, labels, num_classes=2)
    assert t.labels.shape == (128,) and t.reg_targets.shape == (128, 4)
    first, second = t.gt_inds[:64], t.gt_inds[64:]
    assert set(first[first >= 0].tolist()) == {0}
    assert set(second[second >= 0].tolist()) == {1, 2}
    i = int(((locs[0][:, 0] == 28) & (locs[0][:, 1] == 36)).nonzero())
    assert t.reg_targets[i].tolist() == [28 / 8, 36 / 8, 36 / 8, 28 / 8]


def test_no_boxes_gives_background():
    loc, strides, ranges = _single_level(4, 8)
    t = assign_targets_single(loc, strides, ranges, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), num_classes=3)
    assert torch.all(t.labels == 3) and torch.all(t.gt_inds == -1) and t.reg_targets.shape == (16, 4)


def test_sizes_of_interest_must_match_levels():
    with pytest.raises(ValueError, match="sizes_of_interest"):
        assign_targets([compute_locations(2, 2, 8)], (8,), (64,), [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)], num_classes=1)


# ----------------------------------------------------------------------------- losses


def test_giou_identical_boxes_is_zero_loss():
    box = torch.tensor([[2.0, 3.0, 4.0, 5.0]])
    iou, giou = ltrb_iou_giou(box, box)
    assert iou.item() == pytest.approx(1.0) and giou.item() == pytest.approx(1.0)
    assert giou_loss(box, box).item() == pytest.approx(0.0)


def test_giou_hand_computed_values():
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 5.0, 1.0]])
    target = torch.tensor([[3.0, 3.0, 3.0, 3.0], [1.0, 3.0, 1.0, 3.0]])
    iou, giou = ltrb_iou_giou(pred, target)
    # nested boxes: I=4, U=36, C=36; crossed boxes: I=4, U=20, C=36 (smoothed IoU: (I+1)/(U+1))
    assert iou.tolist() == pytest.approx([5 / 37, 5 / 21])
    assert giou.tolist() == pytest.approx([5 / 37, 5 / 21 - 16 / 36])
    w = torch.tensor([0.5, 2.0])
    assert giou_loss(pred, target, w).item() == pytest.approx(0.5 * (1 - 5 / 37) + 2.0 * (1 - (5 / 21 - 16 / 36)))


def test_centerness_targets():
    reg = torch.tensor([[1.0, 2.0, 1.0, 2.0], [1.0, 1.0, 3.0, 4.0]])
    assert centerness_targets(reg).tolist() == pytest.approx([1.0, math.sqrt(1 / 3 * 1 / 4)])
    assert centerness_targets(torch.zeros(0, 4)).shape == (0,)


def _manual_focal(logits, targets, alpha=0.25, gamma=2.0):
    p = logits.sigmoid()
    ce = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))
    p_t = p * targets + (1 - p) * (1 - targets)
    a_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (a_t * (1 - p_t) ** gamma * ce).sum()


def test_fcos_losses_normalisation():
    torch.manual_seed(0)
    num_classes, p = 3, 10
    logits = torch.randn(p, num_classes)
    reg_pred = torch.rand(p, 4) * 3 + 0.5
    ctr_pred = torch.randn(p)
    labels = torch.full((p,), num_classes)
    labels[[1, 4, 7]] = torch.tensor([0, 2, 2])
    reg_targets = torch.rand(p, 4) * 3 + 0.5
    out = fcos_losses(logits, reg_pred, ctr_pred, labels, reg_targets, num_classes=num_classes)

    onehot = torch.zeros(p, num_classes)
    onehot[[1, 4, 7], [0, 2, 2]] = 1.0
    assert out.losses["loss_fcos_cls"].item() == pytest.approx((_manual_focal(logits, onehot) / 3).item(), rel=1e-5)
    pos = torch.tensor([1, 4, 7])
    assert out.pos_inds.tolist() == pos.tolist()
    ctr = centerness_targets(reg_targets[pos])
    expected_loc = giou_loss(reg_pred[pos], reg_targets[pos], ctr) / ctr.sum()
    assert out.losses["loss_fcos_loc"].item() == pytest.approx(expected_loc.item(), rel=1e-5)
    expected_ctr = F.binary_cross_entropy_with_logits(ctr_pred[pos], ctr, reduction="sum") / 3
    assert out.losses["loss_fcos_ctr"].item() == pytest.approx(expected_ctr.item(), rel=1e-5)
    assert out.loss_denorm == pytest.approx(ctr.sum().item())


def test_fcos_losses_without_positives_are_finite_and_connected():
    logits = torch.randn(6, 2, requires_grad=True)
    reg_pred = torch.rand(6, 4, requires_grad=True)
    ctr_pred = torch.randn(6, requires_grad=True)
    out = fcos_losses(logits, reg_pred, ctr_pred, torch.full((6,), 2), torch.zeros(6, 4), num_classes=2)
    onehot = torch.zeros(6, 2)
    assert out.losses["loss_fcos_cls"].item() == pytest.approx(_manual_focal(logits.detach(), onehot).item(), rel=1e-5)
    total = sum(out.losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert logits.grad is not None and reg_pred.grad is not None and ctr_pred.grad is not None


# ----------------------------------------------------------------------------- head and inference


def test_head_shapes_and_prior():
    head = FCOSHead(in_channels=32, num_classes=4, num_levels=2, num_cls_convs=1, num_box_convs=1, use_scale=True)
    feats = [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4)]
    out = head(feats)
    assert [x.shape for x in out.logits] == [(2, 4, 8, 8), (2, 4, 4, 4)]
    assert [x.shape for x in out.reg] == [(2, 4, 8, 8), (2, 4, 4, 4)]
    assert [x.shape for x in out.ctrness] == [(2, 1, 8, 8), (2, 1, 4, 4)]
    assert all((x >= 0).all() for x in out.reg)
    assert head.cls_logits.bias[0].item() == pytest.approx(-math.log(99))
    shared = FCOSHead(in_channels=32, num_classes=4, num_levels=2, num_cls_convs=0, num_box_convs=0, num_share_convs=3)
    assert len(shared.share_tower) == 9 and len(shared.cls_tower) == 0


def test_inference_decodes_thresholds_and_nms():
    c, h, w, stride = 2, 2, 2, 8
    logits = torch.full((c, h, w), -20.0)
    logits[1, 0, 0] = 20.0  # location (4, 4), class 1
    logits[1, 0, 1] = 3.0  # location (12, 4), class 1, overlapping box -> suppressed by NMS
    logits[0, 1, 1] = 0.0  # location (12, 12), class 0, p = 0.5
    ctr = torch.full((1, h, w), 20.0)
    ctr[0, 1, 1] = 0.0  # ctr 0.5 -> cls*ctr = 0.25
    reg = torch.ones(4, h, w) * 4.0  # 64-pixel boxes around every location
    dets = fcos_inference_single_image(
        [logits], [reg], [ctr], [compute_locations(h, w, stride)], [stride],
        score_thresh=0.05, nms_thresh=0.6, post_nms_topk=100,
    )
    assert dets["labels"].tolist() == [1, 0]
    assert dets["boxes"].tolist() == [[-28.0, -28.0, 36.0, 36.0], [-20.0, -20.0, 44.0, 44.0]]
    assert dets["scores"][1].item() == pytest.approx(math.sqrt(0.25), rel=1e-4)
    assert dets["locations"].tolist() == [0, 3]  # (y, x) = (0, 0) and (1, 1)
    # a higher threshold drops the weak detection; post_nms_topk caps the count
    dets = fcos_inference_single_image([logits], [reg], [ctr], [compute_locations(h, w, stride)], [stride], score_thresh=0.3)
    assert dets["labels"].tolist() == [1]
    dets = fcos_inference_single_image([logits], [reg], [ctr], [compute_locations(h, w, stride)], [stride], post_nms_topk=1)
    assert dets["boxes"].shape == (1, 4)


def test_inference_without_candidates_is_empty():
    dets = fcos_inference_single_image(
        [torch.full((3, 2, 2), -30.0)], [torch.ones(4, 2, 2)], [torch.zeros(1, 2, 2)], [compute_locations(2, 2, 8)], [8],
    )
    assert dets["boxes"].shape == (0, 4) and dets["scores"].shape == (0,) and dets["locations"].shape == (0,)


def test_clip_boxes():
    boxes = torch.tensor([[-5.0, 2.0, 30.0, 50.0]])
    assert clip_boxes(boxes, (40, 20)).tolist() == [[0.0, 2.0, 20.0, 40.0]]
    # the exported graph passes the image size as a (2,) tensor: same clip
    assert clip_boxes(boxes, torch.tensor([40, 20])).tolist() == [[0.0, 2.0, 20.0, 40.0]]


def test_inference_returns_unclipped_boxes_with_an_image_size():
    """The image size only selects the boxes (non-empty once clipped); BlendMask blends and
    pastes with the whole predicted box, so the boxes come back as predicted."""
    c, h, w, stride = 1, 2, 2, 8
    args = ([torch.tensor([[[5.0, 1.0], [1.0, 1.0]]])], [torch.ones(4, h, w) * 4.0], [torch.full((1, h, w), 5.0)],
            [compute_locations(h, w, stride)], [stride])
    raw = fcos_inference_single_image(*args, post_nms_topk=1)
    sized = fcos_inference_single_image(*args, image_size=(16, 24), post_nms_topk=1)
    assert raw["boxes"].tolist() == sized["boxes"].tolist() == [[-28.0, -28.0, 36.0, 36.0]]


def test_inference_pre_nms_topk_keeps_the_best_candidates_per_level():
    c, h, w, stride = 1, 1, 4, 8
    logits = torch.tensor([[[0.0, 3.0, 1.0, 2.0]]])  # four disjoint small boxes, all above threshold
    reg = torch.full((4, h, w), 0.25)  # 4-pixel boxes: no NMS suppression
    ctr = torch.full((1, h, w), 20.0)
    dets = fcos_inference_single_image(
        [logits], [reg], [ctr], [compute_locations(h, w, stride)], [stride], score_thresh=0.05, pre_nms_topk=2
    )
    assert dets["boxes"][:, 0].tolist() == [10.0, 26.0]  # locations x = 12 and 28 (logits 3 and 2)
    # thresh_with_ctr=False thresholds sigmoid(cls) alone: a low centerness no longer removes it
    ctr_low = torch.full((1, h, w), -20.0)
    args = ([logits], [reg], [ctr_low], [compute_locations(h, w, stride)], [stride])
    assert fcos_inference_single_image(*args, score_thresh=0.05)["boxes"].shape == (0, 4)
    assert fcos_inference_single_image(*args, score_thresh=0.05, thresh_with_ctr=False)["boxes"].shape == (4, 4)


def test_class_aware_nms_never_suppresses_across_classes():
    # negative coordinates: torchvision's offset label * (max + 1) = -9 would make the classes overlap
    boxes = torch.tensor([[-50.0, -50.0, -10.0, -10.0], [-41.0, -50.0, -1.0, -10.0], [-49.0, -50.0, -10.0, -10.0]])
    keep = class_aware_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0]), 0.5)
    assert keep.tolist() == [0, 1]
    assert class_aware_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).shape == (0,)


def test_inference_drops_boxes_empty_after_clipping_before_the_top_k():
    """Locations in the padding (boxes outside the 16 x 16 image) and a zero-width box score
    highest; the top-k must still fill up with the real, non-empty boxes."""
    h = w = 4
    stride = 8
    locations = compute_locations(h, w, stride)  # centers 4, 12, 20, 28 in x and y
    logits = torch.arange(h * w, dtype=torch.float32).reshape(1, h, w) / 4 - 2  # later locations score higher
    reg = torch.full((4, h, w), 0.25)  # 4-pixel boxes around the locations: they never overlap
    reg[0, 1, 1] = reg[2, 1, 1] = 0.0  # location (12, 12): zero width
    ctr = torch.full((1, h, w), 5.0)
    dets = fcos_inference_single_image([logits], [reg], [ctr], [locations], [stride],
                                       image_size=(16, 16), score_thresh=0.0, post_nms_topk=3)
    # inside the image: (4, 4), (12, 4), (4, 12) and the empty (12, 12); the best three real ones
    assert dets["boxes"].tolist() == [[2.0, 10.0, 6.0, 14.0], [10.0, 2.0, 14.0, 6.0], [2.0, 2.0, 6.0, 6.0]]
    assert dets["locations"].tolist() == [4, 1, 0]  # the locations follow their boxes
    # without an image size only the predicted-empty box goes
    dets = fcos_inference_single_image([logits], [reg], [ctr], [locations], [stride], score_thresh=0.0, post_nms_topk=100)
    assert dets["boxes"].shape == (15, 4) and bool(((dets["boxes"][:, 2:] - dets["boxes"][:, :2]) > 0).all())
