"""EAR: reconstruction by inpainting behind a DINO attention mask (the base of FADeR)."""

from filterformer.models.ear.family import EARFamily
from filterformer.models.ear.model import EAR

__all__ = ["EAR", "EARFamily"]
