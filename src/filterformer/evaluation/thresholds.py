"""Per-category thresholds for binary maps, the rules that make them, and `thresholds.json`.

Rules (SegF1 as the MVTec AD 2 paper defines it), each fixed before the evaluated split is seen:

- ``mean_std``: mean + k std of all validation pixels (k = 3: MVTec's baseline).
- ``quantile``: the q-quantile of all validation pixels (on float16-rounded scores).
- ``f1_pseudo``: the best pooled pixel F1 on ``validation_pseudo`` (validation images with
  pasted pseudo-defects and their exact masks): label-free.
- ``f1_optimal``: the best pooled pixel F1 on the labelled test split (``test_public`` of
  MVTec AD 2, ``test`` of MVTec AD and VisA). It uses that split's labels, so on that split it
  is an **oracle** (the ceiling of the label-free rules) and is reported as such.
- ``fixed``: a number ``level`` on a stated map scale (``scale``: the map value 1.0 reads as
  ``scale``): the threshold on the map is ``level / scale``. The ISVL hybrid's hand-picked
  levels (ISVL hybrid §3.1.1) are levels of its 8-bit maps, floor(255 m) > level: use them on
  maps made with ``eval.levels=255`` and ``scale: 1`` (configs/suite/isvl.yaml). ``chosen_on``
  records where the number was chosen: a split, or :data:`AUTHORS` (by a method's authors on
  test labels), which every test split reports as chosen on itself.

A category's rule may hold ``splits: {<split>: {rule...}}``: a rule of its own for that split
(e.g. ``test_private_mixed``); the stored record then holds ``splits`` with one threshold each,
and :meth:`Threshold.for_split` picks the evaluated split's.

A pixel is anomalous iff its score is strictly above the threshold (MVTec's baseline rule).
On disk: ``{"<category>": {"value": t, "rule": "mean_std", "k": 3, "source_split": "validation"}}``;
the plain ``{"<category>": t}`` form (rule ``given``) and the run folder's per-fusion-mode form
``{"<category>": {"<mode>": {...}}}`` are read too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from filterformer.errors import ConfigError, DataError
from filterformer.evaluation.aupro import (
    KEY_VALUES,
    NUM_KEYS,
    PixelCounts,
    ProAccumulator,
    float16_keys,
)
from filterformer.evaluation.image_metrics import f1_max
from filterformer.io import read_json, write_json

CALIBRATION_RULES = ("mean_std", "quantile", "f1_pseudo", "f1_optimal", "fixed")
"""Rules a category config may name: :func:`threshold_by_rule` calibrates with them."""
RULES = (*CALIBRATION_RULES, "given")
"""Rules a stored threshold may carry (``given``: a number from elsewhere)."""
PARAMS = ("k", "q", "level", "scale")
"""Parameters of the rules, kept in the stored records."""
PSEUDO_SPLIT = "validation_pseudo"
"""Validation images with pasted pseudo-defects (label-free, exact masks)."""
PSEUDO_MIXED = "validation_pseudo_mixed"
"""The same under synthetic lighting changes: f1_pseudo for the mixed split."""
MIXED_SPLIT = "test_private_mixed"
AUTHORS = "authors_test_labels"
"""``chosen_on`` of a published threshold its authors chose on test labels (ISVL hybrid
§3.1.1: "by conducting multiple trials")."""
PseudoPairs = Callable[[bool], Iterable[tuple[np.ndarray, np.ndarray]]]
"""``pseudo(mixed)``: (map, exact mask) pairs of validation_pseudo(_mixed)."""


@dataclass(frozen=True)
class Threshold:
    """A threshold value and how it was made (rule, its parameter, the split it came from)."""

    value: float
    rule: str = "given"
    params: dict[str, float] = field(default_factory=dict)
    source_split: str | None = None
    splits: Mapping[str, Threshold] = field(default_factory=dict)
    """Thresholds of their own for some splits (the others use this one)."""
    checkpoint: str | None = None
    """SHA-256 of the weights the maps came from (a run's threshold fits that checkpoint only)."""
    map_range: tuple[float, float] | None = None
    """(min, max) of the validation maps it was calibrated with: the float16 rescale's range."""

    def for_split(self, split: str) -> Threshold:
        """The threshold that binarises maps of ``split``."""
        return self.splits.get(split, self)

    def is_oracle(self, evaluated_split: str) -> bool:
        """True if the labels of ``evaluated_split`` chose the threshold (f1_optimal there).

        An f1_optimal threshold of unrecorded origin counts as an oracle on every split.
        """
        return self.rule == "f1_optimal" and self.source_split in (None, evaluated_split)

    def describe(self, evaluated_split: str) -> str:
        """Short label for tables, e.g. ``mean+3std(validation)`` or ``f1_optimal(...) ORACLE``."""
        if self.rule == "mean_std":
            label = f"mean+{self.params.get('k', 3):g}std"
        elif self.rule == "quantile":
            label = f"quantile{self.params.get('q', 0):g}"
        elif self.rule == "fixed":
            scale = self.params.get("scale", 1)
            label = f"fixed{self.params.get('level', 0):g}" + (f"/{scale:g}" if scale != 1 else "")
        else:
            label = self.rule
        if self.source_split == AUTHORS:
            label += "(chosen by its authors on test labels)"
        elif self.source_split:
            label += f"({self.source_split})"
        return label + (" ORACLE" if self.is_oracle(evaluated_split) else "")

    def to_json(self) -> dict[str, Any]:
        """The record stored in thresholds.json."""
        record: dict[str, Any] = {"value": self.value, "rule": self.rule, **self.params}
        if self.source_split:
            record["source_split"] = self.source_split
        if self.splits:
            record["splits"] = {split: t.to_json() for split, t in self.splits.items()}
        if self.checkpoint:
            record["checkpoint"] = self.checkpoint
        if self.map_range is not None:
            record["map_range"] = list(self.map_range)
        return record

    @classmethod
    def from_json(cls, record: Any, where: str) -> Threshold:
        """Parse a plain number or a record; ``where`` names the entry in error messages."""
        if isinstance(record, (int, float)) and not isinstance(record, bool):
            return cls(float(record))
        if not isinstance(record, Mapping) or not isinstance(record.get("value"), (int, float)):
            raise ConfigError(
                f"{where}: expected a number or {{'value': t, 'rule': ...}}, got {record!r}."
            )
        rule = record.get("rule", "given")
        if rule not in RULES:
            raise ConfigError(f"{where}: unknown threshold rule {rule!r}; use one of {RULES}.")
        params = {k: v for k, v in record.items() if k in PARAMS}
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in params.values()):
            raise ConfigError(f"{where}: rule parameters {params} must be numbers.")
        params = {k: float(v) for k, v in params.items()}
        splits = record.get("splits") or {}
        if not isinstance(splits, Mapping):
            raise ConfigError(f"{where}: 'splits' must map split names to thresholds.")
        map_range = record.get("map_range")
        if map_range is not None and not (
            isinstance(map_range, list)
            and len(map_range) == 2
            and all(isinstance(v, (int, float)) for v in map_range)
        ):
            raise ConfigError(f"{where}: 'map_range' must be [min, max], got {map_range!r}.")
        return cls(
            float(record["value"]),
            rule,
            params,
            record.get("source_split"),
            {s: cls.from_json(r, f"{where} (split {s})") for s, r in splits.items()},
            record.get("checkpoint"),
            None if map_range is None else (float(map_range[0]), float(map_range[1])),
        )


class MapMoments:
    """Streaming mean and standard deviation of all pixels of many maps (float64).

    Each map's mean and squared deviations are computed in float64 and merged with Chan's
    pairwise formula, which avoids the cancellation of a sum-of-squares.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0

    def update(self, amap: np.ndarray) -> None:
        """Add every pixel of one map."""
        values = np.asarray(amap, dtype=np.float64).ravel()
        n = values.size
        if n == 0:
            return
        mean = float(values.mean())
        m2 = float(np.sum((values - mean) ** 2))
        total = self.count + n
        delta = mean - self.mean
        self._m2 += m2 + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    @property
    def std(self) -> float:
        """Population standard deviation (``np.std``'s default, as in MVTec's hint)."""
        return float(np.sqrt(self._m2 / self.count)) if self.count else float("nan")


def _require_pixels(count: int, source: str) -> None:
    if count == 0:
        raise DataError(
            f"{source}: no anomaly maps to calibrate a threshold on. Produce maps for this "
            "split (ff-predict), or give a threshold with --thresholds."
        )


def mean_std_threshold(
    maps: Iterable[np.ndarray], k: float = 3.0, source: str = "validation"
) -> Threshold:
    """Mean + k std of all pixels of validation ``maps`` (``source`` names them in errors)."""
    moments = MapMoments()
    for amap in maps:
        moments.update(amap)
    _require_pixels(moments.count, source)
    value = moments.mean + k * moments.std
    return Threshold(value, "mean_std", {"k": k}, "validation")


def quantile_threshold(
    maps: Iterable[np.ndarray], q: float, source: str = "validation"
) -> Threshold:
    """The q-quantile of all pixels of validation maps, exact on float16-rounded scores.

    Inverted-CDF definition: at most a fraction 1 - q of these pixels lies strictly above
    it. ``source`` names the maps in errors.
    """
    if not 0.0 <= q <= 1.0:
        raise ConfigError(f"quantile q={q} is outside [0, 1].")
    hist = np.zeros(NUM_KEYS)
    for i, amap in enumerate(maps):
        hist += float16_keys(amap, f"{source} map {i}")[1]
    _require_pixels(int(hist.sum()), source)
    cdf = np.cumsum(hist)
    key = int(np.searchsorted(cdf, q * cdf[-1], side="left"))
    key = max(key, int(np.flatnonzero(hist)[0]))
    return Threshold(float(KEY_VALUES[key]), "quantile", {"q": q}, "validation")


def f1_optimal_threshold(counts: PixelCounts, source_split: str) -> Threshold:
    """The threshold with the best pooled pixel F1 on the split the counts came from."""
    best = f1_max(counts)
    if np.isnan(best.threshold):
        raise DataError(
            f"{source_split}: no anomalous pixel in the ground truth, so no F1-optimal threshold."
        )
    return Threshold(best.threshold, "f1_optimal", {}, source_split)


def _best_f1(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]], split: str, rule: str, source: str
) -> Threshold:
    """The pooled pixel F1-optimal threshold over (map, mask) pairs of ``split``."""
    pixels = ProAccumulator()
    for i, (amap, gt) in enumerate(pairs):
        pixels.update(amap, gt, f"{source} {split} map {i}")
    return replace(f1_optimal_threshold(pixels.pixel_counts(), split), rule=rule)


def fixed_threshold(
    level: float, scale: float, source: str, chosen_on: str | None = None
) -> Threshold:
    """``level`` on a map scale where the map value 1.0 reads ``scale`` (e.g. 79 of 255);
    ``chosen_on``: the split (or :data:`AUTHORS`) the number was chosen on, if any."""
    if not scale > 0:
        raise ConfigError(f"{source}: threshold rule 'fixed' needs scale > 0 (e.g. 255).")
    return Threshold(level / scale, "fixed", {"level": level, "scale": scale}, chosen_on)


def _one_rule(
    rule: Mapping[str, Any],
    validation: Callable[[], Iterable[np.ndarray]],
    labelled: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    pseudo: PseudoPairs | None,
    source: str,
    labelled_split: str,
    split: str | None = None,
) -> Threshold:
    """One threshold by one rule (no ``splits``) for ``split``; see :func:`threshold_by_rule`."""
    name = rule.get("rule", "mean_std")
    if name == "mean_std":
        return mean_std_threshold(validation(), float(rule.get("k", 3.0)), source)
    if name == "quantile":
        if "q" not in rule:
            raise ConfigError(f"{source}: threshold rule 'quantile' needs q (e.g. q: 0.999).")
        return quantile_threshold(validation(), float(rule["q"]), source)
    if name == "fixed":
        if "level" not in rule:
            raise ConfigError(f"{source}: threshold rule 'fixed' needs level (and scale).")
        level, scale = float(rule["level"]), float(rule.get("scale", 1.0))
        return fixed_threshold(level, scale, source, rule.get("chosen_on"))
    if name == "f1_pseudo":
        if pseudo is None:
            raise ConfigError(
                f"{source}: threshold rule 'f1_pseudo' needs the {PSEUDO_SPLIT} maps; this "
                "command cannot make them. Use mean_std or quantile here."
            )
        mixed = split == MIXED_SPLIT
        return _best_f1(pseudo(mixed), PSEUDO_MIXED if mixed else PSEUDO_SPLIT, "f1_pseudo", source)
    if name == "f1_optimal":
        return _best_f1(labelled(), labelled_split, "f1_optimal", source)
    raise ConfigError(
        f"{source}: unknown threshold rule {name!r}; valid: {', '.join(CALIBRATION_RULES)}."
    )


def threshold_by_rule(
    rule: Mapping[str, Any],
    validation: Callable[[], Iterable[np.ndarray]],
    labelled: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    source: str,
    pseudo: PseudoPairs | None = None,
    *,
    labelled_split: str,
) -> Threshold:
    """Calibrate a threshold as a category config's ``threshold`` section says.

    ``rule`` is e.g. ``{"rule": "mean_std", "k": 3}``, ``{"rule": "quantile", "q": 0.999}``,
    ``{"rule": "fixed", "level": 79, "scale": 255}``, ``{"rule": "f1_pseudo"}`` or
    ``{"rule": "f1_optimal"}``, optionally with ``splits: {<split>: {rule...}}``.
    ``validation`` yields the validation maps (it may be called more than once); ``labelled``
    yields (map, GT mask) pairs of ``labelled_split`` (the data's labelled test split:
    test_public, or test for MVTec AD), called only for "f1_optimal"; ``pseudo(mixed)``
    yields (map, exact mask) pairs of validation_pseudo (``mixed``: validation_pseudo_mixed,
    for a rule under ``splits.test_private_mixed``), called only for "f1_pseudo".
    """
    base = _one_rule(rule, validation, labelled, pseudo, source, labelled_split)
    overrides = rule.get("splits") or {}
    splits = {
        split: _one_rule(
            sub, validation, labelled, pseudo, f"{source} (split {split})", labelled_split, split
        )
        for split, sub in overrides.items()
    }
    return Threshold(base.value, base.rule, base.params, base.source_split, splits)


def _select_mode(category: str, entry: Any, mode: str | None, where: str) -> Any:
    """Pick the fusion mode's record from a ``{"<mode>": {...}}`` entry (None if it has none).

    Without ``mode``, a nested entry must hold exactly one mode.
    """
    nested = isinstance(entry, Mapping) and "value" not in entry
    if not nested:
        return entry
    if mode is not None:
        return entry.get(mode)
    if len(entry) == 1:
        return next(iter(entry.values()))
    raise ConfigError(
        f"{where}: category {category!r} has thresholds for several fusion modes "
        f"{sorted(entry)}; say which one (the run's fusion mode picks it with --run)."
    )


def read_thresholds(path: str | os.PathLike, mode: str | None = None) -> dict[str, Threshold]:
    """Read thresholds.json in any of its forms; ``mode`` picks the fusion mode if nested.

    A category whose nested entry has no record for ``mode`` is left out, so the caller
    calibrates that mode by the category's rule.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: thresholds file not found. Check the path.")
    try:
        raw = read_json(path, "thresholds file", "Restore it from a copy, or calibrate again.")
    except DataError as err:
        raise ConfigError(str(err)) from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected an object {{category: threshold}}.")
    records = {
        category: _select_mode(category, entry, mode, str(path)) for category, entry in raw.items()
    }
    return {
        category: Threshold.from_json(record, f"{path}: {category}")
        for category, record in records.items()
        if record is not None
    }


def write_thresholds(
    path: str | os.PathLike, thresholds: Mapping[str, Threshold], mode: str | None = None
) -> None:
    """Write (or update) thresholds.json; other categories and modes already there are kept."""
    path = Path(path)
    fix = "Delete it, then calibrate again."
    raw = read_json(path, "thresholds file", fix) if path.is_file() else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected an object {{category: threshold}}. {fix}")
    for category, threshold in thresholds.items():
        if mode is None:
            raw[category] = threshold.to_json()
        else:
            entry = raw.get(category)
            entry = dict(entry) if isinstance(entry, Mapping) and "value" not in entry else {}
            entry[mode] = threshold.to_json()
            raw[category] = entry
    write_json(path, raw)
