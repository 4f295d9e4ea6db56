"""Model families and encoders by their config names.

Families register themselves (``@register_family`` of :mod:`filterformer.models.family`, as
timm's ``register_model``): the folders under ``models/`` are imported on the first look-up,
so a new family folder needs no edit here, and a family defined elsewhere (a notebook, a
test, another package) registers by being imported before ff-train runs.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

from torch import nn

from filterformer.errors import ConfigError
from filterformer.models.base import FrozenEncoderModel
from filterformer.models.cpr.backbones import DENSENETS, DenseNetFeatures, check_densenet_source
from filterformer.models.encoder import ENCODERS, DinoEncoder, check_weights_source
from filterformer.models.family import FAMILIES, ModelFamily

_discovered = False


def _discover() -> None:
    """Import every sub-package of ``filterformer.models``: their families register."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = Path(__file__).parent
    for info in pkgutil.iter_modules([str(package)]):
        if info.ispkg:
            importlib.import_module(f"filterformer.models.{info.name}")


def families() -> dict[str, ModelFamily]:
    """Every registered family by name (the built-in ones and any imported since)."""
    _discover()
    return dict(FAMILIES)


def family(name: str) -> ModelFamily:
    """The family registered as ``name`` (a ``model.name``)."""
    known = families()
    if name not in known:
        raise ConfigError(f"unknown model name {name!r}; valid: {', '.join(sorted(known))}")
    return known[name]


def family_of(model: nn.Module) -> ModelFamily:
    """The family whose model class ``model`` is (the most derived match)."""
    matches = [f for f in families().values() if type(model) is f.model]
    if not matches:
        raise ConfigError(f"{type(model).__name__} belongs to no registered model family.")
    return matches[0]


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
    """Instantiate the model of family `name` on `encoder` with the config's arguments."""
    model_class = family(name).model
    valid = _init_args(model_class)
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {unknown} for model {name!r}; valid: {sorted(valid)}"
        )
    return model_class(encoder, **kwargs)


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


def encoder_stride(variant: str) -> int:
    """The side that network inputs must be a multiple of: the ViT's patch, or the CNN's
    coarsest stride."""
    if variant in DENSENETS:
        return DENSENETS[variant].strides[-1]
    if variant not in ENCODERS:
        valid = ", ".join([*ENCODERS, *DENSENETS])
        raise ConfigError(f"unknown encoder.variant {variant!r}; valid: {valid}.")
    return int(re.search(r"_patch(\d+)", ENCODERS[variant].arch).group(1))


def check_encoder_source(
    variant: str, weights: str | Path | None, pretrained: bool, allow_download: bool
) -> None:
    """Refuse, before any work, an encoder (DINOv2 or DenseNet) whose weights cannot be had."""
    if variant in DENSENETS:
        check_densenet_source(variant, weights, pretrained, allow_download)
    else:
        check_weights_source(variant, weights, pretrained, allow_download)
