"""The parity check of an export: the exported graph against the torch model on real inputs.

Both run the same normalised network inputs (the run's validation images, or the user's); the
check takes the largest absolute difference of the maps and of the image scores. It passes
when each is at most ``tolerance * max(1, largest |torch value|)``: an absolute tolerance for
maps in [0, 1] (cosine distances, ratios near 1) and a relative one for the z-score maps of
the ``mean`` / ``max`` fusion modes, whose units are validation standard deviations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from filterformer.errors import DeployError
from filterformer.export.graph import MapGraph
from filterformer.export.runtime import Session

FP32_TOLERANCE = 1e-4
"""Float32 export: the runtimes reorder float32 sums, nothing else."""
FP16_TOLERANCE = 1e-2
"""Float16 weights (``--fp16``): each weight rounded to 11 significant bits (relative error up
to 2^-11 = 4.9e-4) through every layer. Ours: about 20x what we measured (maps moved by
2.1e-4 on the demo run and 5.5e-4 with the 448 px random ViT; docs/benchmarks.md,
"Deployment"), leaving room for deeper encoders."""


@dataclass(frozen=True)
class Parity:
    """What the parity check measured, and whether it passed."""

    images: int
    max_map_diff: float
    max_score_diff: float
    map_scale: float
    """max(1, largest |map value| of torch): the tolerance's unit for the maps."""
    score_scale: float
    tolerance: float

    @property
    def ok(self) -> bool:
        """Both differences within the tolerance (in their scales' units)."""
        return (
            self.max_map_diff <= self.tolerance * self.map_scale
            and self.max_score_diff <= self.tolerance * self.score_scale
        )

    def describe(self) -> str:
        """One line: the differences against their limits, and the verdict."""
        return (
            f"parity on {self.images} images: max |map diff| {self.max_map_diff:.3g} "
            f"(limit {self.tolerance * self.map_scale:.3g}), max |score diff| "
            f"{self.max_score_diff:.3g} (limit {self.tolerance * self.score_scale:.3g}): "
            f"{'passed' if self.ok else 'FAILED'}"
        )

    def to_json(self) -> dict[str, float | int | bool]:
        """The record kept in export.json."""
        return {**asdict(self), "ok": self.ok}


def largest_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected|; infinite for another shape or any NaN / inf in ``got``."""
    got = np.asarray(got)
    if got.shape != expected.shape or not np.isfinite(got).all():
        return float("inf")
    return float(np.abs(got - expected).max())


def check_parity(
    graph: MapGraph, session: Session, batches: Iterable[torch.Tensor], tolerance: float
) -> Parity:
    """Run every batch of network inputs through torch and the session; compare the outputs."""
    count, map_diff, score_diff, map_peak, score_peak = 0, 0.0, 0.0, 0.0, 0.0
    for inputs in batches:
        with torch.no_grad():
            maps, scores = (t.numpy() for t in graph(inputs))
        try:
            got_maps, got_scores = session(np.ascontiguousarray(inputs.numpy(), dtype=np.float32))
        except Exception as err:  # each runtime raises its own error types
            raise DeployError(
                f"the exported graph fails in its runtime on inputs of {tuple(inputs.shape)}: "
                f"{str(err).strip().splitlines()[0]}; nothing was written."
            ) from err
        map_diff = max(map_diff, largest_diff(got_maps, maps))
        score_diff = max(score_diff, largest_diff(got_scores, scores))
        map_peak = max(map_peak, float(np.abs(maps).max()))
        score_peak = max(score_peak, float(np.abs(scores).max()))
        count += len(inputs)
    return Parity(count, map_diff, score_diff, max(1.0, map_peak), max(1.0, score_peak), tolerance)
