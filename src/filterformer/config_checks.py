"""Up-front checks of ff-train's settings: every value in its allowed range before any work.

:func:`check_settings` takes the resolved config as flat values (``{"train.epochs": 15,
"input.resize": [896, 896], ...}``, the command line's ``key=value`` names) and raises one
:class:`ConfigError` that names every setting outside its range, with its value and the range,
so that ``train.epochs=0`` or ``train.batch_size=0`` stops the run before data is generated or
a folder is created, instead of training nothing or failing with a traceback later. Keys absent
from the mapping (older run configs, another model's settings) are not checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from filterformer.data.transforms import FITS, INTERPOLATIONS
from filterformer.errors import ConfigError
from filterformer.evaluation.protocol import IMAGE_SCORES, PROTOCOLS, is_image_score
from filterformer.models.attenuation import ATTENUATIONS, FILLS
from filterformer.models.ear.attention import HEAD_RULES
from filterformer.models.ear.fader import PREDICTOR_INPUTS
from filterformer.models.fader import MASK_KINDS, SCALINGS
from filterformer.training.validation import METRICS


@dataclass(frozen=True)
class Allowed:
    """What a setting may be: a test and the words that describe it in the error message."""

    text: str
    test: Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def integer(low: int, high: int | None = None) -> Allowed:
    """An integer in [low, high] (no upper bound when ``high`` is None)."""
    text = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    return Allowed(text, lambda v: _is_int(v) and v >= low and (high is None or v <= high))


def number(low: float, *, above: bool = False, high: float | None = None) -> Allowed:
    """A finite number >= low (> low with ``above``), and <= ``high`` when given."""
    sign = ">" if above else ">="
    text = f"a number {sign} {low}" + ("" if high is None else f" and <= {high}")

    def test(v: Any) -> bool:
        return _is_number(v) and (v > low if above else v >= low) and (high is None or v <= high)

    return Allowed(text, test)


def optional(rule: Allowed) -> Allowed:
    """``rule`` or null."""
    return Allowed(f"null or {rule.text}", lambda v: v is None or rule.test(v))


def pair(rule: Allowed) -> Allowed:
    """A [height, width] list whose two values follow ``rule``."""
    return Allowed(
        f"a [height, width] pair, each {rule.text}",
        lambda v: isinstance(v, list | tuple) and len(v) == 2 and all(rule.test(x) for x in v),
    )


def choice(*values: str) -> Allowed:
    """One of the given names."""
    return Allowed(f"one of {', '.join(values)}", lambda v: v in values)


FLAG = Allowed("true or false", lambda v: isinstance(v, bool))
KERNEL = Allowed("0 (off) or an integer >= 1", lambda v: _is_int(v) and v >= 0)
OVERLAP = Allowed(
    "a fraction in [0, 1) or a whole number of pixels >= 0",
    lambda v: (isinstance(v, float) and 0 <= v < 1) or (_is_int(v) and v >= 0),
)
SIZE = pair(integer(1))

RULES: dict[str, Allowed] = {
    "seed": integer(0, 2**32 - 1),  # numpy's seed range
    "resume": FLAG,
    "progress": FLAG,
    "input.resize": SIZE,
    "input.crop": optional(SIZE),
    "input.fit": choice(*FITS),
    "input.interpolation": choice(*INTERPOLATIONS),
    "encoder.pretrained": FLAG,
    "encoder.allow_download": FLAG,
    "encoder.official_pos_interp": FLAG,
    "encoder.pretrain_img_size": integer(1),
    "model.num_inps": integer(1),
    "model.extractor_depth": integer(1),
    "model.decoder_depth": integer(1),
    "model.mlp_ratio": number(0, above=True),
    "model.ln_eps": number(0, above=True),
    "model.coherence_weight": number(0),
    "model.mining_gamma": number(0),
    "model.diff_depth": integer(1),
    "model.diff_weight": number(0),
    "model.attenuation": choice(*ATTENUATIONS),
    "model.attenuation_hidden": integer(1),
    "model.attenuation_strength": number(0, high=1),
    "model.attenuation_fill": choice(*FILLS),
    "model.attenuation_margin": number(0),
    "model.mosaic_scale": integer(1),
    "model.attention_mass": number(0, high=1),
    "model.attention_heads": choice(*HEAD_RULES),
    "model.ssim_window": Allowed("an odd integer >= 1", lambda v: _is_int(v) and v >= 1 and v % 2),
    "model.ssim_sigma": number(0, above=True),
    "model.msgms_scales": integer(1),
    "model.gms_c": number(0, above=True),
    "model.hidden": integer(1),
    "model.strength": number(0, high=1),
    "model.mask": choice(*MASK_KINDS),
    "model.hard_threshold": number(0, high=1),
    "model.scaling": choice(*SCALINGS),
    "model.margin": number(0),
    "model.predictor_input": choice(*PREDICTOR_INPUTS),
    "model.decoder_lr_scale": number(0),
    "data.image_size": SIZE,
    "data.validation_fraction": Allowed(
        "a fraction strictly between 0 and 1", lambda v: _is_number(v) and 0 < v < 1
    ),
    "category.tiling.enabled": FLAG,
    "category.tiling.tile": SIZE,
    "category.tiling.overlap": OVERLAP,
    "category.tiling.train": FLAG,
    "category.tiling.mode": choice("window", "grid"),
    "category.tiling.grid": Allowed(
        "a [cols, rows] pair of integers >= 1",
        lambda v: (
            isinstance(v, list | tuple) and len(v) == 2 and all(_is_int(x) and x >= 1 for x in v)
        ),
    ),
    "category.postprocess.closing": KERNEL,
    "category.postprocess.fill_holes": FLAG,
    "category.postprocess.erosion": KERNEL,
    "category.postprocess.kernel": choice("ellipse", "rect"),
    "category.postprocess.fill_guard": number(0, above=True, high=1),
    "category.threshold.k": Allowed("a number", _is_number),
    "category.threshold.q": number(0, high=1),
    "train.epochs": integer(1),
    "train.batch_size": integer(1),
    "train.num_workers": integer(0),
    "train.threads": optional(integer(1)),
    "train.log_every": integer(1),
    "train.grad_clip": optional(number(0)),
    "train.compile": FLAG,
    "train.amp_bf16": FLAG,
    "train.deterministic": FLAG,
    "train.optimizer.lr": number(0, above=True),
    "train.optimizer.final_lr": number(0),
    "train.optimizer.warmup_iters": integer(0),
    "train.optimizer.betas": Allowed(
        "a [beta1, beta2] pair, each a number in [0, 1)",
        lambda v: (
            isinstance(v, list | tuple)
            and len(v) == 2
            and all(_is_number(x) and 0 <= x < 1 for x in v)
        ),
    ),
    "train.optimizer.weight_decay": number(0),
    "train.optimizer.eps": number(0, above=True),
    "train.optimizer.amsgrad": FLAG,
    "train.optimizer.clip_threshold": number(0, above=True),
    "train.feature_cache.enabled": FLAG,
    "train.feature_cache.views": integer(1),
    "eval.every": integer(0),
    "eval.batch_size": integer(1),
    "eval.metric": choice(*METRICS),
    "eval.pro_limit": number(0, above=True, high=1),
    "eval.sigma": number(0),
    "eval.blur_kernel": Allowed("an odd integer >= 1", lambda v: _is_int(v) and v >= 1 and v % 2),
    "eval.protocol_size": optional(SIZE),
    "eval.protocol": choice(*PROTOCOLS),
    "eval.image_score": optional(Allowed(f"one of {', '.join(IMAGE_SCORES)}", is_image_score)),
}
"""Each setting's allowed values; ``data.counts.<split>`` entries are integers >= 0."""

COUNT = integer(0)


def check_settings(
    settings: Mapping[str, Any], *, patch_size: int | None = None, world_size: int = 1
) -> None:
    """Raise :class:`ConfigError` naming every setting outside its allowed range.

    Args:
        settings: the resolved config, flattened to dotted keys (``train.epochs``).
        patch_size: the encoder's patch side; the network input (``input.crop``, else
            ``input.resize``) must be a multiple of it, at least one patch (None: unchecked).
        world_size: training processes (torchrun); the global batch must split evenly.
    """
    problems = [
        _describe(key, value, rule.text)
        for key, value in settings.items()
        if (rule := RULES.get(key, COUNT if key.startswith("data.counts.") else None))
        and not rule.test(value)
    ]
    bad = {p.split("=", 1)[0] for p in problems}
    problems += _relations(settings, bad, patch_size, world_size)
    if problems:
        raise ConfigError(
            f"setting(s) out of range: {'; '.join(problems)}. Give each an allowed value "
            "(key=value on the command line)."
        )


def _relations(
    settings: Mapping[str, Any], bad: set[str], patch_size: int | None, world_size: int
) -> list[str]:
    """Checks between settings, on those that passed their own rule."""
    problems = []
    batch = settings.get("train.batch_size")
    if "train.batch_size" not in bad and _is_int(batch) and batch % world_size:
        problems.append(
            _describe(
                "train.batch_size", batch, f"a multiple of the {world_size} training processes"
            )
        )
    resize, crop = settings.get("input.resize"), settings.get("input.crop")
    if {"input.resize", "input.crop"} & bad or resize is None:
        return problems
    if crop is not None and any(c > r for c, r in zip(crop, resize, strict=True)):
        problems.append(_describe("input.crop", crop, f"at most input.resize={_show(resize)}"))
    key, size = ("input.resize", resize) if crop is None else ("input.crop", crop)
    if patch_size and any(side % patch_size or side < patch_size for side in size):
        fit = [max(patch_size, side // patch_size * patch_size) for side in size]
        problems.append(
            _describe(
                key,
                size,
                f"multiples of the encoder's patch size {patch_size}, e.g. {_show(fit)}",
            )
        )
    return problems


def _describe(key: str, value: Any, allowed: str) -> str:
    return f"{key}={_show(value)} (allowed: {allowed})"


def _show(value: Any) -> str:
    """A value as the command line writes it: null, true, [56, 70], abc."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Sequence) and not isinstance(value, str):
        return f"[{', '.join(_show(v) for v in value)}]"
    return str(value)
