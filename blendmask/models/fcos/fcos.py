"""The FCOS proposal generator: head + target assignment + losses + inference.

Attribute names mirror AdelaiDet (``proposal_generator.fcos_head``).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .head import FCOSHead, FCOSHeadOutputs
from .detections import fcos_inference_single_image
from .losses import fcos_losses
from .targets import assign_targets, compute_locations

__all__ = ["FCOS", "FCOSPositives", "flatten_levels"]


class FCOSPositives(NamedTuple):
    """What the mask branch needs about the positive locations of a training batch.

    gt_inds: ``(Np,)`` index of each positive's box in the concatenation of all images' boxes.
    ctr_targets: ``(Np,)`` centerness targets (mask-loss weights).
    loss_denorm: normaliser of the weighted losses (sum of centerness targets over ranks).
    locations: ``(Np,)`` int64 index of each positive location in :func:`flatten_levels` order
        (where BlendMask's top layer reads its attentions).
    """

    gt_inds: Tensor
    ctr_targets: Tensor
    loss_denorm: float
    locations: Tensor


def flatten_levels(per_level: Sequence[Tensor]) -> Tensor:
    """List of ``(N, C, Hl, Wl)`` -> ``(N * sum_l Hl * Wl, C)``, image-major, then level, then position."""
    n, c = per_level[0].shape[:2]
    return torch.cat([x.permute(0, 2, 3, 1).reshape(n, -1, x.shape[1]) for x in per_level], dim=1).reshape(-1, c)


class FCOS(nn.Module):
    """FCOS on a list of FPN levels.

    Args:
        in_channels: FPN channels.
        num_classes: foreground classes.
        strides: stride of each FPN level the head runs on, e.g. ``(8, 16, 32, 64, 128)``.
        sizes_of_interest: regression size boundaries between levels (``len(strides) - 1`` values).
        num_cls_convs, num_box_convs, num_share_convs, norm, use_scale, prior_prob: see :class:`FCOSHead`.
        center_sample, pos_radius: center sampling and its radius in strides.
        focal_alpha, focal_gamma: focal-loss parameters.
        thresh_with_ctr, score_thresh, pre_nms_topk, nms_thresh, post_nms_topk: inference
            parameters, see :func:`fcos_inference_single_image`.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        strides: Sequence[int],
        sizes_of_interest: Sequence[float],
        num_cls_convs: int = 4,
        num_box_convs: int = 4,
        num_share_convs: int = 0,
        norm: str = "GN",
        use_scale: bool = False,
        prior_prob: float = 0.01,
        center_sample: bool = True,
        pos_radius: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        thresh_with_ctr: bool = True,
        score_thresh: float = 0.05,
        pre_nms_topk: int = 1000,
        nms_thresh: float = 0.6,
        post_nms_topk: int = 100,
    ):
        super().__init__()
        if len(sizes_of_interest) != len(strides) - 1:
            raise ValueError(
                f"sizes_of_interest needs len(strides) - 1 = {len(strides) - 1} values, got {list(sizes_of_interest)}"
            )
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)
        self.sizes_of_interest = tuple(sizes_of_interest)
        self.center_sample = center_sample
        self.pos_radius = pos_radius
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.thresh_with_ctr = thresh_with_ctr
        self.score_thresh = score_thresh
        self.pre_nms_topk = pre_nms_topk
        self.nms_thresh = nms_thresh
        self.post_nms_topk = post_nms_topk
        self.fcos_head = FCOSHead(
            in_channels=in_channels,
            num_classes=num_classes,
            num_levels=len(self.strides),
            num_cls_convs=num_cls_convs,
            num_box_convs=num_box_convs,
            num_share_convs=num_share_convs,
            norm=norm,
            use_scale=use_scale,
            prior_prob=prior_prob,
        )

    def forward(self, features: List[Tensor]) -> FCOSHeadOutputs:
        """Head outputs for ``features``, one ``(N, D, Hl, Wl)`` map per entry of ``strides``."""
        if len(features) != len(self.strides):
            raise ValueError(f"FCOS expects {len(self.strides)} FPN levels, got {len(features)}")
        return self.fcos_head(features)

    def locations(self, features: Sequence[Tensor]) -> List[Tensor]:
        """Per-level ``(Hl * Wl, 2)`` location coordinates."""
        return [compute_locations(f.shape[-2], f.shape[-1], s, f.device) for f, s in zip(features, self.strides)]

    def losses(
        self,
        head: FCOSHeadOutputs,
        gt_boxes: List[Tensor],
        gt_labels: List[Tensor],
    ) -> Tuple[Dict[str, Tensor], FCOSPositives]:
        """Training losses and positives.

        Args:
            head: head outputs of the batch.
            gt_boxes: per image ``(Gi, 4)`` xyxy boxes in the padded-batch frame.
            gt_labels: per image ``(Gi,)`` int64 classes.
        """
        targets = assign_targets(
            self.locations(head.logits),
            self.strides,
            self.sizes_of_interest,
            gt_boxes,
            gt_labels,
            num_classes=self.num_classes,
            center_sample=self.center_sample,
            radius=self.pos_radius,
        )
        out = fcos_losses(
            flatten_levels(head.logits),
            flatten_levels(head.reg),
            flatten_levels(head.ctrness).reshape(-1),
            targets.labels,
            targets.reg_targets,
            num_classes=self.num_classes,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
        )
        positives = FCOSPositives(targets.gt_inds[out.pos_inds], out.ctr_targets, out.loss_denorm, out.pos_inds)
        return out.losses, positives

    @torch.no_grad()
    def predict(
        self,
        head: FCOSHeadOutputs,
        image_sizes: Sequence[Union[Tuple[int, int], Tensor]],
    ) -> List[Dict[str, Tensor]]:
        """Detections per image: ``boxes (n, 4)`` as predicted (unclipped; those empty once
        clipped to the image are dropped), ``scores``, ``labels``, and ``locations (n,)``: the
        index of each detection's location in :func:`flatten_levels` order (image ``i``'s
        locations start at ``i * sum_l Hl * Wl``).

        ``image_sizes`` holds per image its ``(h, w)``: ints, or a ``(2,)`` tensor when traced."""
        locations = self.locations(head.logits)
        per_image = sum(loc.shape[0] for loc in locations)
        detections = [
            fcos_inference_single_image(
                [x[i] for x in head.logits],
                [x[i] for x in head.reg],
                [x[i] for x in head.ctrness],
                locations,
                self.strides,
                image_size=size,
                score_thresh=self.score_thresh,
                thresh_with_ctr=self.thresh_with_ctr,
                pre_nms_topk=self.pre_nms_topk,
                nms_thresh=self.nms_thresh,
                post_nms_topk=self.post_nms_topk,
            )
            for i, size in enumerate(image_sizes)
        ]
        for i, d in enumerate(detections):
            d["locations"] = d["locations"] + i * per_image
        return detections
