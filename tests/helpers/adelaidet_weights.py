"""A synthetic AdelaiDet BlendMask state dict, written from AdelaiDet's and detectron2's source.

Key names and shapes follow ``adet/modeling/blendmask`` (BlendMask, ProtoNet), ``adet/modeling/fcos``
(FCOSHead: towers of [conv, GN, ReLU], cls_logits/bbox_pred/ctrness), ``adet/modeling/backbone/fpn.py``
(LastLevelP6P7/LastLevelP6 on P5) and detectron2's ResNet/FPN (stem.conv1.norm, res2..res5 with
conv1..3 + shortcut, fpn_lateral/fpn_output). It is built independently of our modules, so a
successful strict load proves the names line up.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict

import torch

_RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _randn(shape, generator):
    return torch.randn(shape, generator=generator)


def _bn(sd: Dict[str, torch.Tensor], prefix: str, channels: int, gen, *, counter: bool) -> None:
    sd[prefix + "weight"] = 1 + 0.1 * _randn(channels, gen)
    sd[prefix + "bias"] = 0.1 * _randn(channels, gen)
    sd[prefix + "running_mean"] = 0.1 * _randn(channels, gen)
    sd[prefix + "running_var"] = 1 + torch.rand(channels, generator=gen)
    if counter:
        sd[prefix + "num_batches_tracked"] = torch.tensor(1234)


def _conv(sd, prefix: str, out_c: int, in_c: int, k: int, gen, *, bias: bool) -> None:
    sd[prefix + "weight"] = 0.01 * _randn((out_c, in_c, k, k), gen)
    if bias:
        sd[prefix + "bias"] = 0.01 * _randn(out_c, gen)


def adelaidet_state_dict(*, depth: int = 50, num_classes: int = 80, top_levels: int = 2,
                         num_cls_convs: int = 4, num_box_convs: int = 4, num_share_convs: int = 0,
                         basis_num_convs: int = 3, num_bases: int = 4, attn_size: int = 14,
                         backbone_bn: bool = False, old_centerness: bool = False, seed: int = 0
                         ) -> "OrderedDict[str, torch.Tensor]":
    """AdelaiDet BlendMask ``model`` state dict with detectron2's MSRA ResNet-``depth``.

    ``backbone_bn``: the backbone was trained with (Sync)BN, so its norms carry
    ``num_batches_tracked`` (FrozenBN ones do not). ``old_centerness``: name the FCOS
    centerness conv ``centerness`` as in early FCOS code.
    """
    gen = torch.Generator().manual_seed(seed)
    sd: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    bu = "backbone.bottom_up."
    _conv(sd, bu + "stem.conv1.", 64, 3, 7, gen, bias=False)
    _bn(sd, bu + "stem.conv1.norm.", 64, gen, counter=backbone_bn)
    in_c, mid = 64, 64
    for stage, blocks in enumerate(_RESNET_BLOCKS[depth]):
        out_c = mid * 4
        for b in range(blocks):
            p = f"{bu}res{stage + 2}.{b}."
            if b == 0:
                _conv(sd, p + "shortcut.", out_c, in_c, 1, gen, bias=False)
                _bn(sd, p + "shortcut.norm.", out_c, gen, counter=backbone_bn)
            for name, (o, i, k) in (("conv1", (mid, in_c if b == 0 else out_c, 1)),
                                    ("conv2", (mid, mid, 3)), ("conv3", (out_c, mid, 1))):
                _conv(sd, p + name + ".", o, i, k, gen, bias=False)
                _bn(sd, p + name + ".norm.", o, gen, counter=backbone_bn)
        in_c, mid = out_c, mid * 2
    for level, channels in ((3, 512), (4, 1024), (5, 2048)):
        _conv(sd, f"backbone.fpn_lateral{level}.", 256, channels, 1, gen, bias=True)
        _conv(sd, f"backbone.fpn_output{level}.", 256, 256, 3, gen, bias=True)
    for name in ("p6", "p7")[:top_levels]:
        _conv(sd, f"backbone.top_block.{name}.", 256, 256, 3, gen, bias=True)
    head = "proposal_generator.fcos_head."
    for tower, n in (("cls_tower", num_cls_convs), ("bbox_tower", num_box_convs), ("share_tower", num_share_convs)):
        for i in range(n):  # Sequential(conv, GN, ReLU) per conv
            _conv(sd, f"{head}{tower}.{3 * i}.", 256, 256, 3, gen, bias=True)
            sd[f"{head}{tower}.{3 * i + 1}.weight"] = 1 + 0.1 * _randn(256, gen)
            sd[f"{head}{tower}.{3 * i + 1}.bias"] = 0.1 * _randn(256, gen)
    _conv(sd, head + "cls_logits.", num_classes, 256, 3, gen, bias=True)
    _conv(sd, head + "bbox_pred.", 4, 256, 3, gen, bias=True)
    _conv(sd, head + ("centerness." if old_centerness else "ctrness."), 1, 256, 3, gen, bias=True)
    basis = "basis_module."
    for i in range(3):  # refine: conv_with_kaiming_uniform("SyncBN", True) -> [conv (no bias), BN, ReLU]
        _conv(sd, f"{basis}refine.{i}.0.", 128, 256, 3, gen, bias=False)
        _bn(sd, f"{basis}refine.{i}.1.", 128, gen, counter=True)
    for i in list(range(basis_num_convs)) + [basis_num_convs + 1]:  # index num_convs is the Upsample
        _conv(sd, f"{basis}tower.{i}.0.", 128, 128, 3, gen, bias=False)
        _bn(sd, f"{basis}tower.{i}.1.", 128, gen, counter=True)
    _conv(sd, f"{basis}tower.{basis_num_convs + 2}.", num_bases, 128, 1, gen, bias=True)
    _conv(sd, f"{basis}seg_head.0.", 128, 256, 3, gen, bias=False)
    _bn(sd, f"{basis}seg_head.1.", 128, gen, counter=True)
    _conv(sd, f"{basis}seg_head.3.", 128, 128, 3, gen, bias=False)
    _bn(sd, f"{basis}seg_head.4.", 128, gen, counter=True)
    _conv(sd, f"{basis}seg_head.6.", num_classes + 1, 128, 1, gen, bias=True)
    _conv(sd, "top_layer.", num_bases * attn_size * attn_size, 256, 3, gen, bias=True)
    return sd
