"""INP-Former and Filter-Former as model families: their settings' ranges; both export and
have a zero-shot map."""

from __future__ import annotations

from filterformer.models.base import FrozenEncoderModel
from filterformer.models.family import ModelFamily, ZeroShotMaps, register_family
from filterformer.models.inpformer.attenuation import ATTENUATIONS, FILLS
from filterformer.models.inpformer.model import FilterFormer, INPFormer
from filterformer.ranges import choice, integer, number

INP_RANGES = {
    "model.num_inps": integer(1),
    "model.extractor_depth": integer(1),
    "model.decoder_depth": integer(1),
    "model.mlp_ratio": number(0, above=True),
    "model.ln_eps": number(0, above=True),
    "model.coherence_weight": number(0),
    "model.mining_gamma": number(0),
    "model.attenuation": choice(*ATTENUATIONS),
    "model.attenuation_hidden": integer(1),
    "model.attenuation_strength": number(0, high=1),
    "model.attenuation_fill": choice(*FILLS),
    "model.attenuation_margin": number(0),
}


ZERO_SHOT_MAP = "inp_distance"
"""The zero-shot map's name: the distance of each token to its nearest INP."""


class _INPFamily(ModelFamily):
    """What INP-Former and Filter-Former share: export, and the zero-shot INP distance map."""

    exportable = True

    def zero_shot_maps(self, model: FrozenEncoderModel) -> ZeroShotMaps:
        """The INP-Former code's zero-shot map: the INP distance of each token (no decoder)."""
        return ZeroShotMaps(model, ZERO_SHOT_MAP, model.inp_distance_map)


@register_family
class INPFormerFamily(_INPFamily):
    """``model=inpformer``: trains on the images; its map path exports (ff-export)."""

    name = "inpformer"
    model = INPFormer
    setting_ranges = INP_RANGES


@register_family
class FilterFormerFamily(_INPFamily):
    """``model=filterformer``: INP-Former plus the Diff Predictor and L_df."""

    name = "filterformer"
    model = FilterFormer
    setting_ranges = {
        **INP_RANGES,
        "model.diff_depth": integer(1),
        "model.diff_weight": number(0),
    }
