"""FCOS prediction head: classification, box and centerness branches on every FPN level.

Module names mirror AdelaiDet's ``FCOSHead`` (``cls_tower``, ``bbox_tower``, ``share_tower``,
``cls_logits``, ``bbox_pred``, ``ctrness``, ``scales``) so that converted checkpoints load
with an almost identity key mapping. With ``norm="BN"`` every tower conv is followed by one
BatchNorm per FPN level (AdelaiDet's ``ModuleListDial``: keys ``<tower>.<i>.<level>.*``), the
conv weights being shared across levels and the normalisation statistics not.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Scale", "FCOSHead", "FCOSHeadOutputs", "PerLevelBatchNorm"]

_GN_GROUPS = 32


class Scale(nn.Module):
    """Multiplies its input by one learnable scalar (one per FPN level in FCOS)."""

    def __init__(self, *, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class FCOSHeadOutputs(NamedTuple):
    """Per-level head outputs; every entry is a list over FPN levels.

    logits: ``(N, C, Hl, Wl)`` class logits.
    reg: ``(N, 4, Hl, Wl)`` non-negative ``(l, t, r, b)`` distances in units of the level stride.
    ctrness: ``(N, 1, Hl, Wl)`` centerness logits.
    bbox_towers: ``(N, D, Hl, Wl)`` box-tower features (input of the BlendMask top layer).
    """

    logits: List[Tensor]
    reg: List[Tensor]
    ctrness: List[Tensor]
    bbox_towers: List[Tensor]


class PerLevelBatchNorm(nn.ModuleList):
    """One ``BatchNorm2d(channels)`` per FPN level; ``forward(x, level)`` normalises with ``self[level]``."""

    def __init__(self, channels: int, num_levels: int):
        super().__init__([nn.BatchNorm2d(channels) for _ in range(num_levels)])

    def forward(self, x: Tensor, level: int) -> Tensor:
        return self[level](x)


def _make_tower(num_convs: int, channels: int, norm: str, num_levels: int) -> nn.Sequential:
    layers: List[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=True))
        if norm == "GN":
            layers.append(nn.GroupNorm(_GN_GROUPS, channels))
        elif norm == "BN":
            layers.append(PerLevelBatchNorm(channels, num_levels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _run_tower(tower: nn.Sequential, x: Tensor, level: int) -> Tensor:
    for layer in tower:
        x = layer(x, level) if isinstance(layer, PerLevelBatchNorm) else layer(x)
    return x


class FCOSHead(nn.Module):
    """Shared-weight FCOS head applied to every FPN level.

    The towers are ``share_tower`` (used by the RT variants) followed by separate
    ``cls_tower`` and ``bbox_tower``; centerness is predicted from the box tower. Box
    regression follows AdelaiDet's normalised targets: the output is ``relu(reg)`` in units
    of the level's stride (the caller multiplies by the stride to get pixels).

    Args:
        in_channels: channels of every FPN level.
        num_classes: number of foreground classes (sigmoid classification, no background logit).
        num_levels: number of FPN levels the head runs on (for the per-level scales and BN).
        num_cls_convs, num_box_convs, num_share_convs: tower depths.
        norm: ``"GN"`` (GroupNorm with 32 groups, AdelaiDet's default), ``"BN"`` (one BatchNorm
            per level, AdelaiDet's ``"BN"``/``"SyncBN"``) or ``"none"``.
        use_scale: learn one scalar per level multiplying the box regression.
        prior_prob: initial foreground probability of the classifier (focal-loss prior).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_levels: int,
        num_cls_convs: int = 4,
        num_box_convs: int = 4,
        num_share_convs: int = 0,
        norm: str = "GN",
        use_scale: bool = False,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        if norm not in ("GN", "BN", "none"):
            raise ValueError(f"FCOS head norm must be 'GN', 'BN' or 'none', got {norm!r}")
        if norm == "GN" and in_channels % _GN_GROUPS != 0:
            raise ValueError(f"in_channels={in_channels} must be divisible by {_GN_GROUPS} for GN")
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        self.num_classes = num_classes
        self.norm = norm
        self.num_levels = num_levels
        self.cls_tower = _make_tower(num_cls_convs, in_channels, norm, num_levels)
        self.bbox_tower = _make_tower(num_box_convs, in_channels, norm, num_levels)
        self.share_tower = _make_tower(num_share_convs, in_channels, norm, num_levels)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, kernel_size=3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, kernel_size=3, stride=1, padding=1)
        self.ctrness = nn.Conv2d(in_channels, 1, kernel_size=3, stride=1, padding=1)
        self.scales = nn.ModuleList([Scale() for _ in range(num_levels)]) if use_scale else None

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1.0 - prior_prob) / prior_prob))

    def forward(self, features: List[Tensor]) -> FCOSHeadOutputs:
        """Run the head on ``features``, a list of ``(N, in_channels, Hl, Wl)`` FPN maps."""
        if (self.scales is not None or self.norm == "BN") and len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} FPN levels, got {len(features)}")
        logits, reg, ctrness, towers = [], [], [], []
        for level, feature in enumerate(features):
            feature = _run_tower(self.share_tower, feature, level)
            cls_feat = _run_tower(self.cls_tower, feature, level)
            box_feat = _run_tower(self.bbox_tower, feature, level)
            logits.append(self.cls_logits(cls_feat))
            ctrness.append(self.ctrness(box_feat))
            box = self.bbox_pred(box_feat)
            if self.scales is not None:
                box = self.scales[level](box)
            reg.append(F.relu(box))
            towers.append(box_feat)
        return FCOSHeadOutputs(logits, reg, ctrness, towers)
