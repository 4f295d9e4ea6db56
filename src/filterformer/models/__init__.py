"""Models: the frozen ViT encoder, INP-Former's parts, Filter-Former's Diff Predictor, losses,
EAR and FADeR."""

from filterformer.models.base import FrozenEncoderModel
from filterformer.models.diff_predictor import DiffPredictor
from filterformer.models.ear import EAR, FADeR
from filterformer.models.encoder import ENCODERS, DinoEncoder, EncoderSpec, weights_sha256
from filterformer.models.filterformer import (
    MAP_MODES,
    FilterFormer,
    INPFeatures,
    INPFormer,
    fuse_maps,
)
from filterformer.models.inp import Bottleneck, INPExtractor, INPGuidedDecoder
from filterformer.models.losses import coherence_loss, diff_loss, soft_mining_loss
from filterformer.models.registry import MODELS, build_encoder, build_model

__all__ = [
    "ENCODERS",
    "MAP_MODES",
    "MODELS",
    "Bottleneck",
    "DiffPredictor",
    "DinoEncoder",
    "EAR",
    "FADeR",
    "EncoderSpec",
    "FilterFormer",
    "FrozenEncoderModel",
    "INPExtractor",
    "INPFeatures",
    "INPFormer",
    "INPGuidedDecoder",
    "build_encoder",
    "build_model",
    "coherence_loss",
    "diff_loss",
    "fuse_maps",
    "soft_mining_loss",
    "weights_sha256",
]
