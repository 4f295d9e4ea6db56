"""One monotone rescale per category that makes anomaly maps safe and precise in float16.

The server reads float16 maps: the largest finite value is 65504 and the relative spacing of
values is about 1e-3 (11-bit significand). AU-PRO ranks all pixels of a category together, so
the transform must be the same for every image of the category, never per image.

``MapRescale(offset, scale)`` maps a score ``s`` to ``(s - offset) * scale``. Fitted with
:meth:`MapRescale.from_range` on calibration statistics (e.g. the min and max of the
validation maps), the calibration range becomes [0, 1000]: the offset removes the constant
part of the scores (a constant offset would only waste float16 significand bits on digits that
never change), and mapping the range to 1000 leaves a 65x headroom above the calibration
maximum before the float16 limit. Values beyond +-65504 are clipped, which keeps the
transform monotone.

Thresholds: a binary map is ``score > t`` in the original units, by the library's one rule
(:func:`filterformer.evaluation.segf1.binarize`, which ff-eval applies to the same float32
maps). :meth:`MapRescale.encode` returns the float16 map together with that mask, and nudges the few
float16 values that rounding would put on the wrong side of the rescaled threshold
``T = threshold(t)`` by one float16 step, so that ``half > T`` reproduces ``score > t`` bit for
bit. The nudge keeps the map a non-decreasing function of the score (at most one float16 step
of change, no larger than the rounding itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from filterformer.errors import ConfigError, DataError
from filterformer.evaluation.segf1 import binarize

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
DEFAULT_TARGET = 1000.0
"""Where the top of the calibration range lands: float16-exact steps of 0.5 at most up there."""


@dataclass(frozen=True)
class MapRescale:
    """The affine map ``(score - offset) * scale`` with ``scale > 0``."""

    offset: float
    scale: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.offset) and math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(
                f"MapRescale(offset={self.offset}, scale={self.scale}): offset must be finite "
                "and scale finite and > 0 (a monotone increasing transform)."
            )

    @classmethod
    def from_range(cls, low: float, high: float, target: float = DEFAULT_TARGET) -> MapRescale:
        """Map the calibration range [low, high] to [0, target]."""
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ConfigError(
                f"rescale calibration range [{low}, {high}] must be finite with high > low; "
                "compute it on the validation maps of the category (min and max)."
            )
        return cls(offset=low, scale=float(target) / (high - low))

    @classmethod
    def from_dict(cls, data: dict) -> MapRescale:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(offset=float(data["offset"]), scale=float(data["scale"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(
                f"rescale record {data!r} lacks a numeric 'offset' and 'scale' ({err})."
            ) from None

    def to_dict(self) -> dict[str, float]:
        """Plain JSON-serialisable form."""
        return {"offset": self.offset, "scale": self.scale}

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Rescaled scores in float64 (no rounding, no clipping)."""
        return (np.asarray(scores, dtype=np.float64) - self.offset) * self.scale

    def invert(self, rescaled: np.ndarray) -> np.ndarray:
        """Original scores of rescaled values (float64), e.g. to label a colour scale."""
        return np.asarray(rescaled, dtype=np.float64) / self.scale + self.offset

    def threshold(self, t: float) -> float:
        """The float16 threshold T on exported maps: ``half > T`` iff ``score > t``."""
        value = np.float16(np.clip(self.apply(np.float64(t)), -FLOAT16_MAX, FLOAT16_MAX))
        if not -FLOAT16_MAX < float(value) < FLOAT16_MAX:
            raise ConfigError(
                f"threshold {t} lands at {float(value)} after {self}, at the float16 limit; "
                "fit the rescale on a range that contains the threshold."
            )
        return float(value)

    def encode(
        self, scores: np.ndarray, threshold: float | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Float16 map of ``scores`` and, given a threshold, the mask ``scores > threshold``.

        The float16 map satisfies ``half > self.threshold(threshold)`` exactly where the mask
        is true (see the module docstring). Non-finite scores are refused.
        """
        scores = np.asarray(scores)
        if not np.isfinite(scores).all():
            raise DataError(
                "anomaly map holds NaN or inf scores; the model or its checkpoint is broken "
                "(retrain or reload it) - such maps cannot be exported."
            )
        rescaled = self.apply(scores)
        half = np.clip(rescaled, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
        if threshold is None:
            return half, None
        mask = binarize(scores, threshold)
        at = np.float16(self.threshold(threshold))
        half[mask & (half <= at)] = np.nextafter(at, np.float16(np.inf))
        half[~mask & (half > at)] = at
        return half, mask
