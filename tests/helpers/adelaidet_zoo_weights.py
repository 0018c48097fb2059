"""Synthetic AdelaiDet state dicts for the rest of BlendMask's model zoo (DCN, DLA-34, BN heads).

Built on :func:`tests.helpers.adelaidet_weights.adelaidet_state_dict` (R-50/101 + FPN + FCOS + basis + top layer)
by editing the parts that differ; every name and shape below is derived from AdelaiDet's and
detectron2's source, independently of our modules:

- **DCN** (``adet/modeling/backbone/resnet_interval.py`` + detectron2's ``DeformBottleneckBlock``):
  in a stage with ``DEFORM_ON_PER_STAGE`` set, block ``i`` is deformable iff
  ``i % DEFORM_INTERVAL == 0``; it adds ``conv2_offset`` (a detectron2 ``Conv2d`` with bias,
  ``bottleneck -> 27`` for modulated, 18 otherwise, 3x3) next to ``conv2`` (same weight shape
  as the plain 3x3, no bias, with ``.norm``).
- **DLA-34** (``adet/modeling/backbone/dla.py``, ``dla34``: levels [1, 1, 1, 2, 2, 1], channels
  [16, 32, 64, 128, 256, 512], ``BasicBlock``): ``base_layer.{0,1}`` (7x7 conv, norm),
  ``level0``/``level1`` ``.{0,1}`` (3x3 conv, norm), trees ``level2``..``level5`` with
  ``tree1``/``tree2`` (BasicBlock ``conv1/bn1/conv2/bn2``, or nested trees), ``root.conv/bn``
  (1x1, input = 2*out [+ in if level_root] [+ out per nesting]) and ``project.{0,1}`` when
  in != out; the FPN laterals take level3..level5 (128, 256, 512 channels).
- **BN head** (``adet/modeling/fcos/fcos.py``, NORM "BN"/"SyncBN"): the GN after each tower conv
  becomes a ``ModuleListDial`` of one (Sync)BatchNorm per FCOS level: ``<tower>.<3i+1>.<level>.*``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Sequence

import torch

from tests.helpers.adelaidet_weights import _RESNET_BLOCKS, _bn, _conv, adelaidet_state_dict

_BU = "backbone.bottom_up."
_HEAD = "proposal_generator.fcos_head."


def add_deform_convs(sd: Dict[str, torch.Tensor], *, depth: int, stages: Sequence[bool], interval: int,
                     modulated: bool, seed: int = 1) -> Dict[str, torch.Tensor]:
    """Add the ``conv2_offset`` of every deformable block of an MSRA ResNet state dict (in place)."""
    gen = torch.Generator().manual_seed(seed)
    mid = 64
    for stage, blocks in enumerate(_RESNET_BLOCKS[depth]):
        if stages[stage]:
            for block in range(0, blocks, interval):
                _conv(sd, f"{_BU}res{stage + 2}.{block}.conv2_offset.", 27 if modulated else 18, mid, 3, gen,
                      bias=True)
        mid *= 2
    return sd


def _dla_tree(sd, prefix: str, levels: int, in_c: int, out_c: int, gen, *, level_root: bool, root_dim: int = 0):
    if root_dim == 0:
        root_dim = 2 * out_c
    if level_root:
        root_dim += in_c
    if levels == 1:
        for name, cin in (("tree1", in_c), ("tree2", out_c)):
            _conv(sd, f"{prefix}{name}.conv1.", out_c, cin, 3, gen, bias=False)
            _bn(sd, f"{prefix}{name}.bn1.", out_c, gen, counter=True)
            _conv(sd, f"{prefix}{name}.conv2.", out_c, out_c, 3, gen, bias=False)
            _bn(sd, f"{prefix}{name}.bn2.", out_c, gen, counter=True)
        _conv(sd, f"{prefix}root.conv.", out_c, root_dim, 1, gen, bias=False)
        _bn(sd, f"{prefix}root.bn.", out_c, gen, counter=True)
    else:
        _dla_tree(sd, f"{prefix}tree1.", levels - 1, in_c, out_c, gen, level_root=False)
        _dla_tree(sd, f"{prefix}tree2.", levels - 1, out_c, out_c, gen, level_root=False,
                  root_dim=root_dim + out_c)
    if in_c != out_c:
        _conv(sd, f"{prefix}project.0.", out_c, in_c, 1, gen, bias=False)
        _bn(sd, f"{prefix}project.1.", out_c, gen, counter=True)


def dla34_state_dict(seed: int = 2, **kwargs) -> "OrderedDict[str, torch.Tensor]":
    """AdelaiDet ``DLA_34_syncbn_4x``-style state dict: DLA-34 (SyncBN) + FPN on level3-level5."""
    base = adelaidet_state_dict(**kwargs)
    gen = torch.Generator().manual_seed(seed)
    sd: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    levels, channels = (1, 1, 1, 2, 2, 1), (16, 32, 64, 128, 256, 512)
    _conv(sd, _BU + "base_layer.0.", 16, 3, 7, gen, bias=False)
    _bn(sd, _BU + "base_layer.1.", 16, gen, counter=True)
    for index, cin in ((0, 16), (1, 16)):
        _conv(sd, f"{_BU}level{index}.0.", channels[index], cin, 3, gen, bias=False)
        _bn(sd, f"{_BU}level{index}.1.", channels[index], gen, counter=True)
    for index in range(2, 6):
        _dla_tree(sd, f"{_BU}level{index}.", levels[index], channels[index - 1], channels[index], gen,
                  level_root=index > 2)
    for key, value in base.items():
        if key.startswith(_BU):
            continue
        if key.startswith("backbone.fpn_lateral") and key.endswith(".weight"):
            level = int(key[len("backbone.fpn_lateral")])
            value = 0.01 * torch.randn((value.shape[0], channels[level], 1, 1), generator=gen)
        sd[key] = value
    return sd


def with_bn_head(sd: Dict[str, torch.Tensor], *, num_levels: int, towers: Dict[str, int], seed: int = 3
                 ) -> "OrderedDict[str, torch.Tensor]":
    """Replace the GN of every tower conv by per-level (Sync)BN keys ``<tower>.<3i+1>.<level>.*``."""
    gen = torch.Generator().manual_seed(seed)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    gn_keys = {f"{_HEAD}{tower}.{3 * i + 1}.{p}" for tower, n in towers.items() for i in range(n)
               for p in ("weight", "bias")}
    for key, value in sd.items():
        if key not in gn_keys:
            out[key] = value
    for tower, n in towers.items():
        for i in range(n):
            for level in range(num_levels):
                _bn(out, f"{_HEAD}{tower}.{3 * i + 1}.{level}.", 256, gen, counter=True)
    return out
