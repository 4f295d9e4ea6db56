"""INP-Former (Luo et al., CVPR 2025) and Filter-Former (INP-Former + Diff Predictor): the INP
Extractor, bottleneck, INP-guided decoder, Diff Predictor, their losses and the models."""

from filterformer.models.inpformer.diff_predictor import DiffPredictor
from filterformer.models.inpformer.family import FilterFormerFamily, INPFormerFamily
from filterformer.models.inpformer.inp import Bottleneck, INPExtractor, INPGuidedDecoder
from filterformer.models.inpformer.losses import coherence_loss, diff_loss, soft_mining_loss
from filterformer.models.inpformer.model import FilterFormer, INPFeatures, INPFormer

__all__ = [
    "Bottleneck",
    "DiffPredictor",
    "FilterFormer",
    "FilterFormerFamily",
    "INPExtractor",
    "INPFeatures",
    "INPFormer",
    "INPFormerFamily",
    "INPGuidedDecoder",
    "coherence_loss",
    "diff_loss",
    "soft_mining_loss",
]
