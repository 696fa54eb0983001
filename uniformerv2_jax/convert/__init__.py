"""Weight converters: official UniFormerV2, MMAction2 and CLIP checkpoints <-> Flax variables."""

from uniformerv2_jax.convert.clip import from_clip
from uniformerv2_jax.convert.io import WeightFileError, read_state_dict, write_state_dict
from uniformerv2_jax.convert.mapping import CheckpointMismatchError
from uniformerv2_jax.convert.mmaction2 import from_mmaction2, to_mmaction2
from uniformerv2_jax.convert.official import from_official, to_official, transfer_head

__all__ = ["from_official", "from_mmaction2", "from_clip", "to_official", "to_mmaction2",
           "transfer_head", "read_state_dict", "write_state_dict", "CheckpointMismatchError",
           "WeightFileError"]
