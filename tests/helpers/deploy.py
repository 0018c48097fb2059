"""Building blocks of the deployment tests: a small lite model whose random heads give
image-dependent scores and confident masks, test images, and output comparisons."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import Tensor

from blendmask.config import BlendMaskConfig, get_config
from blendmask.models import BlendMask, build_model

#: Score threshold of the "many detections" model: every test image fills post_nms_topk with
#: non-empty boxes (at 0.05 the random heads leave "checker" short once empty boxes are dropped).
LOW_SCORE_THRESH = 0.02
POST_NMS_TOPK = 50


def small_lite_config(score_thresh: float = LOW_SCORE_THRESH) -> BlendMaskConfig:
    """``lite_mobilenet_v2`` with 3 classes at 128-192 px inputs."""
    return get_config("lite_mobilenet_v2", {
        "model.num_classes": 3,
        "input.min_size_test": 128,
        "input.max_size_test": 192,
        "model.fcos.inference_th": score_thresh,
        "model.fcos.post_nms_topk": POST_NMS_TOPK,
    })


def small_lite_model(cfg: BlendMaskConfig, seed: int = 0) -> BlendMask:
    """The model of ``cfg`` in eval mode: offline ImageNet backbone, seeded random heads.

    The class-logit conv is scaled up so that scores vary with the image content, and the last
    basis conv so that mask logits are far from 0 (masks binarised at 0.5 are then stable).
    """
    torch.manual_seed(seed)
    model = build_model(cfg, weights_backbone="imagenet").eval()
    with torch.no_grad():
        model.proposal_generator.fcos_head.cls_logits.weight.mul_(10.0)
        last = [m for m in model.basis_module.tower.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.mul_(30.0)
    return model


def sample_images() -> Dict[str, Tensor]:
    """Named float RGB (3, H, W) images in [0, 1] of different sizes (hence different padded sizes)."""
    g = torch.Generator().manual_seed(1)
    shapes = torch.full((3, 130, 170), 0.1)
    shapes[:, 20:70, 30:90] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]
    shapes[:, 60:120, 100:160] = torch.tensor([0.1, 0.8, 0.3])[:, None, None]
    ys, xs = torch.meshgrid(torch.arange(150), torch.arange(120), indexing="ij")
    checker = ((ys // 8 + xs // 8) % 2).float().expand(3, 150, 120).clone()
    return {
        "noise": torch.rand(3, 150, 120, generator=g),
        "shapes": shapes,
        "checker": checker,
        "blank": torch.zeros(3, 140, 140),
    }


@torch.no_grad()
def max_score(model: BlendMask, image: Tensor) -> float:
    """The largest ``sigmoid(cls) * sigmoid(ctr)`` of ``image`` over all locations and classes."""
    batch, _ = model.transform([image])
    features = model.backbone(batch.tensors)
    head = model.proposal_generator([features[f] for f in model.fcos_in_features])
    return max(float((cls.sigmoid() * ctr.sigmoid()).max()) for cls, ctr in zip(head.logits, head.ctrness))


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """Per-instance IoU of ``(n, 1, H, W)`` probability masks binarised at 0.5 (1 when both are empty)."""
    a, b = (a > 0.5).flatten(1), (b > 0.5).flatten(1)
    inter = (a & b).sum(1).double()
    union = (a | b).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def assert_same_detections(got: Dict[str, Tensor], expected: Dict[str, Tensor], *, box_atol: float = 1e-3) -> None:
    """``got`` and ``expected`` (eval outputs of one image) hold the same detections."""
    assert set(got) == set(expected) == {"boxes", "labels", "scores", "masks"}
    n = expected["boxes"].shape[0]
    assert got["boxes"].shape == (n, 4) and got["scores"].shape == (n,) and got["labels"].shape == (n,)
    assert got["masks"].shape == expected["masks"].shape
    assert got["labels"].dtype == torch.int64
    assert torch.equal(got["labels"], expected["labels"])
    torch.testing.assert_close(got["boxes"], expected["boxes"], atol=box_atol, rtol=0)
    torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-5, rtol=1e-5)
    if n:
        ious = mask_iou(got["masks"], expected["masks"])
        assert bool((ious > 0.99).all()), f"mask IoU below 0.99: {ious.tolist()}"


def eager_single(model: BlendMask, images: List[Tensor]) -> List[Dict[str, Tensor]]:
    """The model's eval output, one image at a time (the exported graphs take one image)."""
    with torch.no_grad():
        return [model([image])[0] for image in images]
