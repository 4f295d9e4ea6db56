"""Build models and encoders by their config names."""

from __future__ import annotations

import inspect
from pathlib import Path

from torch import nn

from filterformer.errors import ConfigError
from filterformer.models.base import FrozenEncoderModel
from filterformer.models.cpr import CPR, DENSENETS, DenseNetFeatures
from filterformer.models.cpr.backbones import check_densenet_source
from filterformer.models.ear import EAR, FADeR
from filterformer.models.encoder import ENCODERS, DinoEncoder, check_weights_source
from filterformer.models.filterformer import FilterFormer, INPFormer

MODELS: dict[str, type[FrozenEncoderModel]] = {
    "inpformer": INPFormer,
    "filterformer": FilterFormer,
    "cpr": CPR,
    "ear": EAR,
    "fader": FADeR,
}


def _init_args(cls: type) -> set[str]:
    """Keyword arguments accepted by `cls` and the model classes it forwards ``**kwargs`` to."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is FrozenEncoderModel:
            break
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters if p.kind is not p.VAR_KEYWORD}
    names |= set(getattr(cls, "keyword_settings", ()))  # settings taken by **keywords
    return names - {"self", "encoder"}


def build_model(name: str, encoder: nn.Module, **kwargs: object) -> FrozenEncoderModel:
    """Instantiate model `name` (a key of MODELS) on `encoder` with the config's arguments."""
    if name not in MODELS:
        raise ConfigError(f"unknown model name {name!r}; valid: {', '.join(MODELS)}")
    valid = _init_args(MODELS[name])
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {unknown} for model {name!r}; valid: {sorted(valid)}"
        )
    return MODELS[name](encoder, **kwargs)


def build_encoder(variant: str, **kwargs: object) -> DinoEncoder | DenseNetFeatures:
    """Instantiate the frozen encoder `variant` (a key of ENCODERS or of DENSENETS)."""
    if variant in DENSENETS:
        return DenseNetFeatures(variant, **kwargs)
    if variant not in ENCODERS:
        valid = ", ".join([*ENCODERS, *DENSENETS])
        raise ConfigError(f"unknown encoder variant {variant!r}; valid: {valid}")
    return DinoEncoder(variant, **kwargs)


def encoder_hub_name(variant: str) -> str:
    """The timm hub name of an encoder variant's pretrained weights (for the run's identity)."""
    if variant in DENSENETS:
        return str(DENSENETS[variant].arch)
    return ENCODERS[variant].arch


def check_encoder_source(
    variant: str, weights: str | Path | None, pretrained: bool, allow_download: bool
) -> None:
    """Refuse, before any work, an encoder (DINOv2 or DenseNet) whose weights cannot be had."""
    if variant in DENSENETS:
        check_densenet_source(variant, weights, pretrained, allow_download)
    else:
        check_weights_source(variant, weights, pretrained, allow_download)
