"""The bottom modules: the bases the blender crops, from backbone features (:class:`BottomModule`).

- :class:`ProtoNet` (:mod:`.protonet`): AdelaiDet's bottom module;
- :class:`DeepLabV3PlusBottom` (:mod:`.deeplabv3plus`): the paper's Table 7 choice;
- their shared auxiliary semantic head (:mod:`.semantic_head`) and blocks (:mod:`.base`).
"""
from .base import BottomModule, channels_of, conv_block
from .deeplabv3plus import ASPP, ASPP_RATES, SHALLOW_CHANNELS, DeepLabV3PlusBottom
from .protonet import ProtoNet
from .semantic_head import SemanticHead, semantic_targets_from_instances

__all__ = ["ASPP", "ASPP_RATES", "BottomModule", "DeepLabV3PlusBottom", "ProtoNet", "SHALLOW_CHANNELS", "SemanticHead",
           "channels_of", "conv_block", "semantic_targets_from_instances"]
