"""CPR (Contrastive Patch Retrieval; Li et al., IEEE TIP 2024): backbones, global retrieval,
foreground estimation, retrieval heads, windowed local retrieval, loss, the model, its training
pairs and its family plug-in."""

from filterformer.models.cpr.backbones import DENSENETS, DenseNetFeatures, ViTScales
from filterformer.models.cpr.family import CPRFamily
from filterformer.models.cpr.local import MemoryBank, windowed_min_distance
from filterformer.models.cpr.loss import point_pair_loss
from filterformer.models.cpr.model import CPR, PAIR_CHANNELS, pack_pair
from filterformer.models.cpr.references import ReferenceSet, RetrievalSettings

__all__ = [
    "CPR",
    "CPRFamily",
    "DENSENETS",
    "PAIR_CHANNELS",
    "DenseNetFeatures",
    "MemoryBank",
    "ReferenceSet",
    "RetrievalSettings",
    "ViTScales",
    "pack_pair",
    "point_pair_loss",
    "windowed_min_distance",
]
