"""FADeR as a model family: EAR's settings plus its own, trained on top of an EAR run."""

from __future__ import annotations

from filterformer.models.ear.family import EAR_RANGES
from filterformer.models.fader.model import PREDICTOR_INPUTS, FADeR
from filterformer.models.fader.parts import MASK_KINDS, SCALINGS, SHRINKS
from filterformer.models.family import BaseRun, ModelFamily, register_family
from filterformer.ranges import choice, integer, number


@register_family
class FADeRFamily(ModelFamily):
    """``model=fader``: starts from the trained EAR run named by ``model.ear_run``."""

    name = "fader"
    model = FADeR
    base_run = BaseRun(key="ear_run", family="ear")
    exportable = True
    setting_ranges = {
        **EAR_RANGES,
        "model.hidden": integer(1),
        "model.strength": number(0, high=1),
        "model.mask": choice(*MASK_KINDS),
        "model.hard_threshold": number(0, high=1),
        "model.scaling": choice(*SCALINGS),
        "model.shrink": choice(*SHRINKS),
        "model.margin": number(0),
        "model.predictor_input": choice(*PREDICTOR_INPUTS),
        "model.decoder_lr_scale": number(0),
    }
