"""Panoptic BlendMask: the semantic head's layout, the fusion rules, P2, training and eval on tiny images."""
import pytest
import torch

from blendmask.config import get_config, list_configs
from blendmask.models import PanopticBlendMask, build_model
from blendmask.models.panoptic import SemSegFPNHead, combine_panoptic, semantic_targets

SMALL_PANOPTIC_MODEL = {"input.min_size_train": (64,), "input.max_size_train": 96, "input.min_size_test": 64,
                        "input.max_size_test": 96, "model.num_classes": 2, "model.panoptic.num_stuff_classes": 2}


def test_head_has_detectron2s_layout_and_stride_4_output():
    head = SemSegFPNHead(in_features=("p2", "p3", "p4", "p5"), in_strides=(4, 8, 16, 32), in_channels=16,
                         num_classes=54, conv_dims=32, norm="GN")
    keys = set(head.state_dict())
    convs = {k.rsplit(".", 1)[0] for k in keys if k.endswith(".weight") and ".norm" not in k and "predictor" not in k}
    assert convs == {"p2.0", "p3.0", "p4.0", "p4.2", "p5.0", "p5.2", "p5.4"}  # one conv per x2 (and p2's own)
    assert {"p2.0.norm.weight", "p2.0.norm.bias", "predictor.weight", "predictor.bias"} <= keys
    assert "p2.0.bias" not in keys  # the conv before GN has no bias
    assert head.predictor.weight.shape == (54, 32, 1, 1)
    feats = {f"p{l}": torch.randn(2, 16, 64 // 2 ** l, 96 // 2 ** l) for l in range(2, 6)}
    logits = head(feats)
    assert logits.shape == (2, 54, 16, 24)
    targets = torch.full((2, 64, 96), 255, dtype=torch.int64)
    targets[:, :8] = 3
    loss = head.loss(logits, targets)
    full = head.upsample(logits)
    expected = torch.nn.functional.cross_entropy(full[:, :, :8], targets[:, :8])  # void pixels excluded
    assert torch.allclose(loss, expected * 1.0, atol=1e-5)


def test_semantic_targets_are_resized_nearest_and_padded_with_ignore():
    sem = torch.tensor([[1, 2], [3, 0]])
    out = semantic_targets([{"sem_seg": sem}], [(4, 4)], (4, 8), 255)
    assert out.shape == (1, 4, 8)
    assert out[0, :, :4].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 0], [3, 3, 0, 0]]
    assert (out[0, :, 4:] == 255).all()
    with pytest.raises(ValueError, match="needs 'sem_seg'"):
        semantic_targets([{}], [(4, 4)], (4, 4), 255)


def _fuse(masks, scores, labels, semantic, **kw):
    args = dict(overlap_thresh=0.4, stuff_area_limit=3, instances_score_thresh=0.2)
    args.update(kw)
    return combine_panoptic(torch.tensor(masks, dtype=torch.bool), torch.tensor(scores), torch.tensor(labels),
                            torch.tensor(semantic), **args)  # lists in, as hand-written


def test_fusion_orders_by_score_stops_at_the_threshold_and_refuses_big_overlaps():
    a = [[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    b = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]  # 2 of its 4 px on a: 50% > 40% -> dropped
    c = [[0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0]]  # 1 of 3 on a: 33% -> pasted on its free pixels
    d = [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]]  # below the score threshold
    sem = [[0] * 4, [0] * 4, [0, 0, 2, 2]]
    pan, segs = _fuse([b, a, c, d], [0.5, 0.9, 0.4, 0.1], [1, 0, 1, 0], sem)
    assert [(s["id"], s["isthing"], s["instance_id"]) for s in segs if s["isthing"]] == [(1, True, 1), (2, True, 2)]
    assert pan.tolist()[:2] == [[1, 1, 1, 1], [0, 0, 2, 2]]
    assert segs[1]["area"] == 2 and segs[0]["score"] == pytest.approx(0.9)
    assert pan[2].tolist() == [0, 0, 0, 0]  # stuff 2 has 2 px < the area limit 3; d was never pasted
    pan, segs = _fuse([b, a, c, d], [0.5, 0.9, 0.4, 0.1], [1, 0, 1, 0], sem, overlap_thresh=0.5)
    assert [s["instance_id"] for s in segs if s["isthing"]] == [1, 0, 2]  # 50% is not > 50%


def test_fusion_fills_stuff_on_free_pixels_only_and_never_from_the_things_class():
    sem = [[1, 1, 1, 0], [1, 1, 1, 0], [2, 2, 2, 2]]
    inst = [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    pan, segs = _fuse([inst], [0.9], [0], sem)
    stuff = [s for s in segs if not s["isthing"]]
    assert [(s["category_id"], s["area"]) for s in stuff] == [(0, 5), (1, 4)]  # stuff index = semantic - 1
    assert pan[0, 3] == 0 and pan[1, 3] == 0  # semantic "things" without an instance stay unassigned
    assert pan[0, 0] == 1
    pan, segs = combine_panoptic(torch.zeros(0, 3, 4, dtype=torch.bool), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                                 torch.tensor(sem), overlap_thresh=0.4, stuff_area_limit=3, instances_score_thresh=0.2)
    assert [s["isthing"] for s in segs] == [False, False]  # no instances: stuff only


def test_presets_follow_adelaidets_panoptic_configs():
    for name in ("Panoptic_R_50_1x", "Panoptic_R_50_3x", "Panoptic_R_101_3x", "Panoptic_R_50_dcni3_5x",
                 "Panoptic_R_101_dcni3_5x", "lite_mobilenet_v2_panoptic"):
        assert name in list_configs()
    cfg = get_config("Panoptic_R_101_dcni3_5x")
    p = cfg.model.panoptic
    assert p.enabled and cfg.model.backbone.fpn_with_p2 and p.in_features == ("p2", "p3", "p4", "p5")
    assert (p.loss_weight, p.instances_score_thresh, p.overlap_thresh, p.stuff_area_limit) == (0.5, 0.45, 0.4, 4096)
    assert (p.convs_dim, p.common_stride, p.norm, p.ignore_value, p.num_stuff_classes) == (128, 4, "GN", 255, 53)
    assert cfg.model.backbone.name == "resnet101" and cfg.model.backbone.deform_interval == 3
    assert cfg.solver.max_iter == 400000 and cfg.input.max_size_train == 1333
    assert get_config("Panoptic_R_50_3x").solver.max_iter == 270000
    assert not get_config("R_50_1x").model.panoptic.enabled


def test_p2_is_an_fpn_option_and_required_by_the_semantic_head():
    model = build_model(get_config("lite_mobilenet_v2_panoptic", SMALL_PANOPTIC_MODEL))
    assert isinstance(model, PanopticBlendMask)
    assert model.backbone.strides["p2"] == 4 and "backbone.fpn_lateral2.weight" in model.state_dict()
    plain = build_model(get_config("lite_mobilenet_v2", {"model.num_classes": 2}))
    assert "p2" not in plain.backbone.strides and not any("sem_seg_head" in k for k in plain.state_dict())
    with pytest.raises(ValueError, match="no FPN level 'p2'.*fpn_with_p2"):
        build_model(get_config("lite_mobilenet_v2_panoptic", {**SMALL_PANOPTIC_MODEL, "model.backbone.fpn_with_p2": False}))


def _targets(images):
    targets = []
    for image in images:
        h, w = image.shape[1:]
        masks = torch.zeros(1, h, w, dtype=torch.uint8)
        masks[0, 10:40, 12:44] = 1
        sem = torch.ones(h, w, dtype=torch.int64)
        sem[h // 2:] = 2
        sem[masks[0].bool()] = 0
        targets.append({"boxes": torch.tensor([[12.0, 10, 44, 40]]), "labels": torch.tensor([1]), "masks": masks,
                        "sem_seg": sem})
    return targets


def test_trains_and_evaluates_to_a_panoptic_map_of_the_input_size():
    torch.manual_seed(0)
    model = build_model(get_config("lite_mobilenet_v2_panoptic", {**SMALL_PANOPTIC_MODEL, "model.panoptic.stuff_area_limit": 16}))
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    model.train()
    losses = model(images, _targets(images))
    assert "loss_sem_seg" in losses and "loss_mask" in losses
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.sem_seg_head.predictor.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        results = model(images)
    for image, result in zip(images, results):
        h, w = image.shape[1:]
        assert result["panoptic_seg"].shape == (h, w) and result["panoptic_seg"].dtype == torch.int32
        assert result["sem_seg"].shape == (3, h, w)
        assert result["masks"].shape[-2:] == (h, w)  # the instance results as BlendMask's
        ids = set(result["panoptic_seg"].unique().tolist()) - {0}
        assert ids == {s["id"] for s in result["segments_info"]}
        for seg in result["segments_info"]:
            assert int((result["panoptic_seg"] == seg["id"]).sum()) == seg["area"]
            assert 0 <= seg["category_id"] < (2 if seg["isthing"] else 2)


def test_training_needs_the_semantic_target():
    model = build_model(get_config("lite_mobilenet_v2_panoptic", SMALL_PANOPTIC_MODEL)).train()
    images = [torch.rand(3, 64, 64)]
    targets = _targets(images)
    del targets[0]["sem_seg"]
    with pytest.raises(ValueError, match="needs 'sem_seg'"):
        model(images, targets)


@pytest.mark.parametrize("name, layout", [("resnet50", "torchvision"), ("dla34", "msra")])
def test_p2_for_the_other_bottom_up_networks(name, layout):
    import dataclasses

    from blendmask.config import BackboneConfig
    from blendmask.models.backbone import build_backbone

    net = build_backbone(dataclasses.replace(BackboneConfig(), name=name, layout=layout, fpn_with_p2=True,
                                             fpn_top_levels=0)).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 96))
    assert list(out) == ["p2", "p3", "p4", "p5"] and out["p2"].shape == (1, 256, 16, 24)


def test_eval_runs_the_backbone_once_and_reports_blendmasks_own_instances():
    """The panoptic eval path shares BlendMask.detect's pipeline: one backbone pass feeds both the
    instance and semantic heads, and the instance results are postprocess_detections' of detect's."""
    from blendmask.models.blendmask import postprocess_detections

    torch.manual_seed(0)
    model = build_model(get_config("lite_mobilenet_v2_panoptic", SMALL_PANOPTIC_MODEL)).eval()
    model.proposal_generator.score_thresh = 0.0  # an untrained model: keep some detections
    images = [torch.rand(3, 64, 80)]
    calls = []
    hook = model.backbone.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        result = model(images)[0]
    hook.remove()
    assert len(calls) == 1
    with torch.no_grad():
        batch, _ = model.transform(images)
        det = model.detect(batch.tensors, batch.image_sizes)[0]
    expected = postprocess_detections(det["boxes"], det["scores"], det["labels"], det["masks"],
                                      image_size=batch.image_sizes[0], original_size=(64, 80))
    assert expected["boxes"].shape[0] > 0
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(result[key], expected[key])


def test_eval_refuses_rle_masks():
    model = build_model(get_config("lite_mobilenet_v2_panoptic", SMALL_PANOPTIC_MODEL)).eval()
    model.mask_format = "rle"
    with pytest.raises(ValueError, match="mask_format must be 'probs'"):
        model([torch.rand(3, 64, 64)])
