"""FADeR (Park et al., arXiv 2407.04597): EAR with a feature-attenuation soft mask."""

from filterformer.models.fader.family import FADeRFamily
from filterformer.models.fader.model import FADeR

__all__ = ["FADeR", "FADeRFamily"]
