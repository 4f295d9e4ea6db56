"""EAR as a model family: the ranges of its mask, mosaic, U-Net and MSGMS settings."""

from __future__ import annotations

from filterformer.models.ear.attention import HEAD_RULES
from filterformer.models.ear.model import EAR
from filterformer.models.ear.unet import UNET_LAYOUTS, UNET_OUTPUTS
from filterformer.models.family import ModelFamily, register_family
from filterformer.ranges import ODD, choice, integer, number

EAR_RANGES = {
    "model.unet_layout": choice(*UNET_LAYOUTS),
    "model.unet_output": choice(*UNET_OUTPUTS),
    "model.mosaic_scale": integer(1),
    "model.attention_mass": number(0, high=1),
    "model.attention_heads": choice(*HEAD_RULES),
    "model.ssim_window": ODD,
    "model.ssim_sigma": number(0, above=True),
    "model.msgms_scales": integer(1),
    "model.gms_c": number(0, above=True),
}


@register_family
class EARFamily(ModelFamily):
    """``model=ear``: reconstruction by inpainting behind a DINO attention mask."""

    name = "ear"
    model = EAR
    setting_ranges = EAR_RANGES
    exportable = True
