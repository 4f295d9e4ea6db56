"""Up-front checks of ff-train's settings: every value in its allowed range before any work.

:func:`check_settings` takes the resolved config as flat values (``{"train.epochs": 15,
"input.resize": [896, 896], ...}``, the command line's ``key=value`` names) and raises one
:class:`ConfigError` that names every setting outside its range, with its value and the range,
so that ``train.epochs=0`` or ``train.batch_size=0`` stops the run before data is generated or
a folder is created, instead of training nothing or failing with a traceback later. Keys absent
from the mapping (older run configs, another model's settings) are not checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from filterformer.data.tiling import TRAIN_TILES
from filterformer.data.transforms import FITS, INTERPOLATIONS
from filterformer.errors import ConfigError
from filterformer.evaluation.protocol import IMAGE_SCORES, PROTOCOLS, is_image_score
from filterformer.inference.postprocess import HOLE_FILLS
from filterformer.ranges import (
    FLAG,
    KERNEL,
    ODD,
    OVERLAP,
    SIZE,
    Allowed,
    choice,
    integer,
    is_int,
    is_number,
    number,
    optional,
)
from filterformer.training.schedule import SCHEDULES
from filterformer.training.validation import METRICS

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
    "data.image_size": SIZE,
    "data.validation_fraction": Allowed(
        "a fraction strictly between 0 and 1", lambda v: is_number(v) and 0 < v < 1
    ),
    "category.tiling.enabled": FLAG,
    "category.tiling.tile": SIZE,
    "category.tiling.overlap": OVERLAP,
    "category.tiling.train": FLAG,
    "category.tiling.train_tiles": choice(*TRAIN_TILES),
    "category.tiling.mode": choice("window", "grid"),
    "category.tiling.grid": Allowed(
        "a [cols, rows] pair of integers >= 1",
        lambda v: (
            isinstance(v, list | tuple) and len(v) == 2 and all(is_int(x) and x >= 1 for x in v)
        ),
    ),
    "category.postprocess.closing": KERNEL,
    "category.postprocess.fill_holes": Allowed(
        f"false, true (= border) or one of {', '.join(HOLE_FILLS)}",
        lambda v: isinstance(v, bool) or v in HOLE_FILLS,
    ),
    "category.postprocess.erosion": KERNEL,
    "category.postprocess.kernel": choice("ellipse", "rect"),
    "category.postprocess.fill_guard": number(0, above=True, high=1),
    "category.threshold.k": Allowed("a number", is_number),
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
    "train.optimizer.schedule": choice(*SCHEDULES),
    "train.optimizer.warmup_epochs": number(0),
    "train.optimizer.restart_epochs": number(0, above=True),
    "train.optimizer.restart_mult": integer(1),
    "train.optimizer.min_lr_scale": number(0, high=1),
    "train.optimizer.betas": Allowed(
        "a [beta1, beta2] pair, each a number in [0, 1)",
        lambda v: (
            isinstance(v, list | tuple)
            and len(v) == 2
            and all(is_number(x) and 0 <= x < 1 for x in v)
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
    "eval.blur_kernel": ODD,
    "eval.protocol_size": optional(SIZE),
    "eval.blur_at": choice("network", "original"),
    "eval.levels": optional(integer(1)),
    "eval.protocol": choice(*PROTOCOLS),
    "eval.image_score": optional(Allowed(f"one of {', '.join(IMAGE_SCORES)}", is_image_score)),
}
"""Each common setting's allowed values; ``data.counts.<split>`` entries are integers >= 0.
The ``model.*`` settings are checked by the model family's own ranges."""

COUNT = integer(0)


def check_settings(
    settings: Mapping[str, Any],
    *,
    family_ranges: Mapping[str, Allowed] | None = None,
    patch_size: int | None = None,
    world_size: int = 1,
) -> None:
    """Raise :class:`ConfigError` naming every setting outside its allowed range.

    Args:
        settings: the resolved config, flattened to dotted keys (``train.epochs``).
        family_ranges: the model family's ranges of its ``model.*`` settings.
        patch_size: the encoder's patch side; the network input (``input.crop``, else
            ``input.resize``) must be a multiple of it, at least one patch (None: unchecked).
        world_size: training processes (torchrun); the global batch must split evenly.
    """
    rules = {**RULES, **(family_ranges or {})}
    problems = [
        _describe(key, value, rule.text)
        for key, value in settings.items()
        if (rule := rules.get(key, COUNT if key.startswith("data.counts.") else None))
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
    if "train.batch_size" not in bad and is_int(batch) and batch % world_size:
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
