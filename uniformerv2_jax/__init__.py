"""UniFormerV2 in JAX/Flax: the model, its presets, its weight converters, video features."""

from uniformerv2_jax.convert import (
                                     from_clip,
                                     from_mmaction2,
                                     from_official,
                                     to_mmaction2,
                                     to_official,
                                     transfer_head,
)
from uniformerv2_jax.features import features
from uniformerv2_jax.model import GlobalUniBlock, LocalMHRA, LocalUniBlock, UniFormerV2
from uniformerv2_jax.presets import PRESETS, create_model

__all__ = ["UniFormerV2", "LocalMHRA", "LocalUniBlock", "GlobalUniBlock", "PRESETS",
           "create_model", "from_official", "from_mmaction2", "from_clip", "to_official",
           "to_mmaction2", "transfer_head", "features"]
