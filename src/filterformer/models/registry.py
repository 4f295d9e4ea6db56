"""Build models and encoders by their config names."""

from __future__ import annotations

import inspect

from filterformer.errors import ConfigError
from filterformer.models.base import FrozenEncoderModel
from filterformer.models.ear import EAR, FADeR
from filterformer.models.encoder import ENCODERS, DinoEncoder
from filterformer.models.filterformer import FilterFormer, INPFormer

MODELS: dict[str, type[FrozenEncoderModel]] = {
    "inpformer": INPFormer,
    "filterformer": FilterFormer,
    "ear": EAR,
    "fader": FADeR,
}


def _init_args(cls: type) -> set[str]:
    """Keyword arguments accepted by `cls` and the model classes it forwards ``**kwargs`` to."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is FrozenEncoderModel:
            break
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters if p.kind is not p.VAR_KEYWORD}
    return names - {"self", "encoder"}


def build_model(name: str, encoder: DinoEncoder, **kwargs: object) -> FrozenEncoderModel:
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


def build_encoder(variant: str, **kwargs: object) -> DinoEncoder:
    """Instantiate the frozen encoder `variant` (a key of ENCODERS)."""
    if variant not in ENCODERS:
        raise ConfigError(f"unknown encoder variant {variant!r}; valid: {', '.join(ENCODERS)}")
    return DinoEncoder(variant, **kwargs)
