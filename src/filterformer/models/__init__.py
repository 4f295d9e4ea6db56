"""Models: the frozen encoders, the shared model base and map fusion, and one folder per model
family (``inpformer``: INP-Former and Filter-Former; ``cpr``; ``ear``; ``fader``), each
registering itself (:mod:`filterformer.models.family`)."""

from filterformer.models.base import FrozenEncoderModel
from filterformer.models.encoder import ENCODERS, DinoEncoder, EncoderSpec, weights_sha256
from filterformer.models.family import ModelFamily, TrainingContext, register_family
from filterformer.models.fusion import MAP_MODES, fuse_maps
from filterformer.models.inpformer import (
    Bottleneck,
    DiffPredictor,
    FilterFormer,
    INPExtractor,
    INPFeatures,
    INPFormer,
    INPGuidedDecoder,
    coherence_loss,
    diff_loss,
    soft_mining_loss,
)
from filterformer.models.registry import build_encoder, build_model, families, family

__all__ = [
    "ENCODERS",
    "MAP_MODES",
    "Bottleneck",
    "DiffPredictor",
    "DinoEncoder",
    "EncoderSpec",
    "FilterFormer",
    "FrozenEncoderModel",
    "INPExtractor",
    "INPFeatures",
    "INPFormer",
    "INPGuidedDecoder",
    "ModelFamily",
    "TrainingContext",
    "build_encoder",
    "build_model",
    "coherence_loss",
    "diff_loss",
    "families",
    "family",
    "fuse_maps",
    "register_family",
    "soft_mining_loss",
    "weights_sha256",
]
