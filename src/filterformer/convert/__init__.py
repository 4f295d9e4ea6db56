"""Checkpoints of other code bases turned into our weights (used by ff-convert)."""

from filterformer.convert.inp_former import (
    ConvertedWeights,
    KeyMap,
    convert_state_dict,
    official_layout,
)

__all__ = ["ConvertedWeights", "KeyMap", "convert_state_dict", "official_layout"]
