"""Panoptic BlendMask: BlendMask's instances plus a Panoptic-FPN semantic branch for the stuff classes.

As AdelaiDet's ``configs/BlendMask/Panoptic`` models:

- :class:`SemSegFPNHead` is detectron2's semantic FPN head on P2-P5: per level, ``max(1, log2(stride /
  common_stride))`` blocks of [3x3 conv (no bias) + GN + ReLU, x2 bilinear upsample while above the
  common stride], summed at stride ``common_stride`` (4), then a 1x1 ``predictor``. Its training loss is
  the cross-entropy of the x4-upsampled logits against the semantic target (``ignore_value`` pixels
  excluded), times ``loss_weight`` (0.5 in the panoptic configs). Module names follow detectron2
  (``p2.0.weight``, ``p2.0.norm.weight``, ``p3.0``/``p3.1`` (upsample), ..., ``predictor``), so
  AdelaiDet's ``panoptic_module.*`` weights map onto ``sem_seg_head.*`` by renaming only.
- :func:`combine_panoptic` follows detectron2's ``combine_semantic_and_instance_outputs``: instances in
  decreasing score order down to ``instances_score_thresh``, each dropped when more than
  ``overlap_thresh`` of its mask is already taken and otherwise pasted on the free pixels; then every
  stuff class of the semantic argmax on the still-free pixels with at least ``stuff_area_limit`` pixels.
  Semantic class 0 ("things") never becomes a segment.

Semantic labels: 0 is "things" (every thing segment merged), ``1..S`` the stuff categories, as
detectron2's "panoptic_separated" data; :mod:`blendmask.data.panoptic` computes them on the fly.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import get_norm
from .blendmask import BlendMask

__all__ = ["SemSegFPNHead", "PanopticBlendMask", "combine_panoptic", "semantic_targets"]


def _msra_fill(conv: nn.Conv2d) -> nn.Conv2d:
    """detectron2's ``c2_msra_fill``: kaiming-normal (fan_out, relu), zero bias."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class _ConvNormReLU(nn.Conv2d):
    """3x3 conv owning its ``norm`` (detectron2's ``Conv2d(norm=..., activation=relu)``); no bias with a norm."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=norm == "none")
        self.norm = get_norm(norm, out_channels) if norm != "none" else None
        _msra_fill(self)

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        return F.relu(self.norm(x) if self.norm is not None else x)


class SemSegFPNHead(nn.Module):
    """detectron2's semantic FPN head (see the module docstring).

    Args:
        in_features: FPN level names, e.g. ``("p2", "p3", "p4", "p5")``.
        in_strides: the stride of each of ``in_features``.
        in_channels: FPN channels.
        num_classes: semantic classes (stuff classes + 1 for "things").
        conv_dims: channels of the 3x3 convs (128).
        common_stride: the stride all levels are brought to (4).
        norm: ``"GN"`` or ``"none"``.
        loss_weight: weight of the cross-entropy (0.5 in the panoptic configs).
        ignore_value: target label excluded from the loss (255).

    ``forward(features)`` returns logits ``(N, num_classes, H/common_stride, W/common_stride)``;
    :meth:`loss` scores them against ``(N, H, W)`` int64 targets.
    """

    def __init__(self, *, in_features: Sequence[str], in_strides: Sequence[int], in_channels: int, num_classes: int,
                 conv_dims: int = 128, common_stride: int = 4, norm: str = "GN", loss_weight: float = 1.0,
                 ignore_value: int = 255):
        super().__init__()
        if len(in_features) == 0 or len(in_features) != len(in_strides):
            raise ValueError(f"in_features {list(in_features)} and in_strides {list(in_strides)} must be non-empty "
                             "and of the same length")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 ('things' + at least one stuff class), got {num_classes}")
        if norm not in ("GN", "none"):
            raise ValueError(f"norm must be 'GN' or 'none', got {norm!r}")
        order = sorted(range(len(in_features)), key=lambda i: in_strides[i])
        self.in_features = tuple(in_features[i] for i in order)
        self.common_stride = int(common_stride)
        self.loss_weight = float(loss_weight)
        self.ignore_value = int(ignore_value)
        self.num_classes = int(num_classes)
        for i in order:
            stride = int(in_strides[i])
            if stride < common_stride:
                raise ValueError(f"level {in_features[i]!r} has stride {stride} < common_stride {common_stride}")
            layers: List[nn.Module] = []
            for k in range(max(1, int(math.log2(stride) - math.log2(common_stride)))):
                layers.append(_ConvNormReLU(in_channels if k == 0 else conv_dims, conv_dims, norm))
                if stride != common_stride:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.add_module(in_features[i], nn.Sequential(*layers))
        self.predictor = _msra_fill(nn.Conv2d(conv_dims, num_classes, kernel_size=1))

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        x = None
        for name in self.in_features:
            y = getattr(self, name)(features[name])
            x = y if x is None else x + y
        return self.predictor(x)

    def upsample(self, logits: Tensor) -> Tensor:
        """Logits at stride 1 of the padded batch: ``(N, C, H, W)``."""
        return F.interpolate(logits, scale_factor=self.common_stride, mode="bilinear", align_corners=False)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Weighted mean cross-entropy of ``logits`` (from :meth:`forward`) against ``targets (N, H, W)``."""
        full = self.upsample(logits.float())
        if full.shape[-2:] != targets.shape[-2:]:
            raise ValueError(f"semantic targets {tuple(targets.shape)} do not match the upsampled logits "
                             f"{tuple(full.shape)}")
        if not bool((targets != self.ignore_value).any()):
            return full.sum() * 0.0  # all void: nothing to learn, graph kept connected
        return F.cross_entropy(full, targets, ignore_index=self.ignore_value) * self.loss_weight


def semantic_targets(targets: Sequence[Mapping[str, Any]], image_sizes: Sequence[Tuple[int, int]],
                     padded_size: Tuple[int, int], ignore_value: int) -> Tensor:
    """Batch the per-image ``sem_seg (H, W)`` int64 targets at the model's input scale.

    Each map is resized (nearest) to its image's resized size and padded at the bottom/right with
    ``ignore_value`` to ``padded_size``: ``(N, Hp, Wp)`` int64.
    """
    out = []
    for i, (target, size) in enumerate(zip(targets, image_sizes)):
        sem = target.get("sem_seg")
        if not isinstance(sem, Tensor) or sem.dim() != 2:
            raise ValueError(f"targets[{i}] needs 'sem_seg' (H, W) int64 to train the panoptic semantic branch")
        sem = sem.to(torch.int64)
        if tuple(sem.shape) != tuple(size):
            sem = F.interpolate(sem[None, None].float(), size=size, mode="nearest")[0, 0].to(torch.int64)
        out.append(F.pad(sem, (0, padded_size[1] - size[1], 0, padded_size[0] - size[0]), value=ignore_value))
    return torch.stack(out)


def combine_panoptic(masks: Tensor, scores: Tensor, labels: Tensor, semantic: Tensor, *, overlap_thresh: float,
                     stuff_area_limit: int, instances_score_thresh: float) -> Tuple[Tensor, List[Dict[str, Any]]]:
    """Fuse instances and a semantic map into one panoptic map (rules in the module docstring).

    Args:
        masks: ``(n, H, W)`` bool instance masks.
        scores, labels: ``(n,)`` instance scores and contiguous thing labels.
        semantic: ``(H, W)`` int semantic argmax (0 = things, ``1..S`` = stuff).
    Returns:
        ``panoptic_seg (H, W)`` int32 segment ids (0 = unassigned) and ``segments_info``: one dict per
        segment, ``id``, ``isthing``, ``category_id`` (the thing label for things; the stuff index
        ``semantic - 1`` in ``0..S-1`` for stuff), ``area``, and for things ``score`` and ``instance_id``
        (the index into the inputs).
    """
    height, width = semantic.shape
    if masks.shape[1:] != (height, width) or scores.shape != (masks.shape[0],) or labels.shape != scores.shape:
        raise ValueError(f"combine_panoptic: masks {tuple(masks.shape)}, scores {tuple(scores.shape)} and labels "
                         f"{tuple(labels.shape)} do not fit a semantic map of {height}x{width}")
    panoptic = torch.zeros((height, width), dtype=torch.int32, device=semantic.device)
    segments: List[Dict[str, Any]] = []
    masks = masks.to(device=semantic.device, dtype=torch.bool)
    for index in torch.argsort(scores, descending=True, stable=True).tolist():
        score = float(scores[index])
        if score < instances_score_thresh:
            break
        mask = masks[index]
        area = int(mask.sum())
        if area == 0:
            continue
        taken = int((mask & (panoptic > 0)).sum())
        if taken / area > overlap_thresh:
            continue
        if taken:
            mask = mask & (panoptic == 0)
        panoptic[mask] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "isthing": True, "category_id": int(labels[index]),
                         "area": int(mask.sum()), "score": score, "instance_id": index})
    for label in torch.unique(semantic).tolist():
        if label == 0:
            continue
        mask = (semantic == label) & (panoptic == 0)
        area = int(mask.sum())
        if area < stuff_area_limit:
            continue
        panoptic[mask] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "isthing": False, "category_id": int(label) - 1, "area": area})
    return panoptic, segments


class PanopticBlendMask(BlendMask):
    """BlendMask with a semantic branch and panoptic fusion (AdelaiDet's panoptic BlendMask).

    Keyword arguments are :class:`BlendMask`'s plus:

    Args:
        sem_seg_head: the :class:`SemSegFPNHead` (its features must be FPN levels of the backbone).
        instances_score_thresh, overlap_thresh, stuff_area_limit: the fusion rules (:func:`combine_panoptic`).

    Training: targets also carry ``sem_seg (H, W)`` int64 (0 things, ``1..S`` stuff, ``ignore_value``
    void, in the input image's size); the losses add ``loss_sem_seg``. Eval: each result is
    BlendMask's (``boxes``, ``labels``, ``scores``, ``masks``) plus ``sem_seg (S + 1, H, W)`` softmax
    probabilities, ``panoptic_seg (H, W)`` int32 ids and ``segments_info`` (see
    :func:`combine_panoptic`); instance masks are binarised at 0.5 for the fusion.
    """

    def __init__(self, *, sem_seg_head: SemSegFPNHead, instances_score_thresh: float = 0.2,
                 overlap_thresh: float = 0.4, stuff_area_limit: int = 4096, **blendmask_kwargs: Any):
        super().__init__(**blendmask_kwargs)
        self.sem_seg_head = sem_seg_head
        self.instances_score_thresh = float(instances_score_thresh)
        self.overlap_thresh = float(overlap_thresh)
        self.stuff_area_limit = int(stuff_area_limit)

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        """Losses (training) or panoptic results (eval); see the class docstring."""
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            for i, t in enumerate(targets):
                if isinstance(t, dict) and "masks" not in t:
                    raise ValueError(f"targets[{i}] needs 'masks' (n, H, W) uint8/bool to train BlendMask")
        batch, targets = self.transform(images, targets if self.training else None)
        features, head = self._heads(batch.tensors)
        sem_logits = self.sem_seg_head(features)
        if self.training:
            losses = self._losses(features, head, targets)
            sem_targets = semantic_targets(targets, batch.image_sizes, tuple(batch.tensors.shape[-2:]),
                                           self.sem_seg_head.ignore_value).to(sem_logits.device)
            losses["loss_sem_seg"] = self.sem_seg_head.loss(sem_logits, sem_targets)
            return losses
        if self.mask_format != "probs":
            raise ValueError(f"PanopticBlendMask.mask_format must be 'probs' (the fusion reads the pasted "
                             f"mask probabilities), got {self.mask_format!r}")
        original_sizes = [(int(img.shape[1]), int(img.shape[2])) for img in images]
        detections = self._detect_from_heads(features, head, batch.image_sizes)
        results = self._postprocess(detections, batch.image_sizes, original_sizes)
        return [self.add_panoptic(result, sem_logits[i], image_size=size, original_size=orig)
                for i, (result, size, orig) in enumerate(zip(results, batch.image_sizes, original_sizes))]

    def add_panoptic(self, result: Dict[str, Any], sem_logits: Tensor, *, image_size: Sequence[int],
                     original_size: Sequence[int]) -> Dict[str, Any]:
        """Add ``sem_seg``, ``panoptic_seg`` and ``segments_info`` to one image's instance ``result``
        (BlendMask's eval output, in the original size) from its semantic logits ``(C, Hp/4, Wp/4)`` of
        the padded batch; ``image_size`` is the resized size before padding. Shared by the eval path and
        the post-processing of the exported graphs (:mod:`blendmask.deploy.panoptic`)."""
        full = self.sem_seg_head.upsample(sem_logits[None])[:, :, :int(image_size[0]), :int(image_size[1])]
        if tuple(int(v) for v in image_size) != tuple(int(v) for v in original_size):
            full = F.interpolate(full, size=[int(v) for v in original_size], mode="bilinear", align_corners=False)
        probs = full[0].softmax(dim=0)
        panoptic, segments = combine_panoptic(
            result["masks"][:, 0] >= 0.5, result["scores"], result["labels"], probs.argmax(dim=0),
            overlap_thresh=self.overlap_thresh, stuff_area_limit=self.stuff_area_limit,
            instances_score_thresh=self.instances_score_thresh)
        result.update(sem_seg=probs, panoptic_seg=panoptic, segments_info=segments)
        return result
