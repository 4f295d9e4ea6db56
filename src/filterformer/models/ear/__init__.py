"""EAR (reconstruction by inpainting behind a DINO attention mask) and FADeR on it."""

from filterformer.models.ear.fader import FADeR
from filterformer.models.ear.model import EAR

__all__ = ["EAR", "FADeR"]
