"""The parity check of an export: its stages in the runtime against the torch model.

Both run the same normalised network inputs (the run's validation images, or the user's): the
torch model's own map path (``finish(model.anomaly_maps(images))``, with its own retrieval and
float16 bank where it has them) and the exported stages in ONNX Runtime or OpenVINO with the
runtime's NumPy steps. The check takes the largest absolute difference of the maps and of the
image scores; it passes when each is at most ``tolerance * max(1, largest |torch value|)``: an
absolute tolerance for maps in [0, 1] (cosine distances, ratios near 1) and a relative one for
the z-score maps of the ``mean`` / ``max`` fusion modes, whose units are validation standard
deviations. The plan's ``checks`` (e.g. the indices of retrieved references) must agree too,
as sets per image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from filterformer.errors import DeployError
from filterformer.models.export_plan import ExportPlan
from filterformer.runtime.pipeline import MAPS, SCORES, Pipeline

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
    mismatched: dict[str, int] = field(default_factory=dict)
    """Per checked intermediate array (e.g. ``neighbours``): images where it differs."""

    @property
    def ok(self) -> bool:
        """Both differences within the tolerance (in their scales' units), no mismatch."""
        return (
            self.max_map_diff <= self.tolerance * self.map_scale
            and self.max_score_diff <= self.tolerance * self.score_scale
            and not any(self.mismatched.values())
        )

    def describe(self) -> str:
        """One line: the differences against their limits, and the verdict."""
        checked = "".join(
            f", {name} differ on {count} of {self.images} images"
            for name, count in self.mismatched.items()
        )
        return (
            f"parity on {self.images} images: max |map diff| {self.max_map_diff:.3g} "
            f"(limit {self.tolerance * self.map_scale:.3g}), max |score diff| "
            f"{self.max_score_diff:.3g} (limit {self.tolerance * self.score_scale:.3g})"
            f"{checked}: {'passed' if self.ok else 'FAILED'}"
        )

    def to_json(self) -> dict[str, object]:
        """The record kept in export.json."""
        return {**asdict(self), "ok": self.ok}


def largest_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected|; infinite for another shape or any NaN / inf in ``got``."""
    got = np.asarray(got)
    if got.shape != expected.shape or not np.isfinite(got).all():
        return float("inf")
    return float(np.abs(got - expected).max())


def differing_rows(got: np.ndarray, expected: np.ndarray) -> int:
    """Rows (images) whose values differ as sets (all rows for another shape)."""
    got = np.asarray(got)
    if got.shape != expected.shape:
        return len(expected)
    flat = (len(expected), -1)
    return int((np.sort(got.reshape(flat)) != np.sort(expected.reshape(flat))).any(1).sum())


def _run(pipeline: Pipeline, inputs: torch.Tensor) -> dict[str, np.ndarray]:
    try:
        return pipeline.run(np.ascontiguousarray(inputs.numpy(), dtype=np.float32))
    except Exception as err:  # each runtime raises its own error types
        raise DeployError(
            f"the exported graph fails in its runtime on inputs of {tuple(inputs.shape)}: "
            f"{str(err).strip().splitlines()[0]}; nothing was written."
        ) from err


def check_parity(
    model: nn.Module,
    finish: nn.Module,
    plan: ExportPlan,
    pipeline: Pipeline,
    batches: Iterable[torch.Tensor],
    tolerance: float,
) -> Parity:
    """Run every batch of network inputs through torch and the pipeline; compare the outputs."""
    count, map_diff, score_diff, map_peak, score_peak = 0, 0.0, 0.0, 0.0, 0.0
    mismatched: dict[str, int] = {}
    for inputs in batches:
        with torch.no_grad():
            maps, scores = (t.numpy() for t in finish(model.anomaly_maps(inputs)))
            checks = plan.checks(inputs) if plan.checks else {}
        got = _run(pipeline, inputs)
        map_diff = max(map_diff, largest_diff(got[MAPS], maps))
        score_diff = max(score_diff, largest_diff(got[SCORES], scores))
        map_peak = max(map_peak, float(np.abs(maps).max()))
        score_peak = max(score_peak, float(np.abs(scores).max()))
        for name, expected in checks.items():
            differing = differing_rows(got[name], expected.cpu().numpy())
            mismatched[name] = mismatched.get(name, 0) + differing
        count += len(inputs)
    return Parity(
        count, map_diff, score_diff, max(1.0, map_peak), max(1.0, score_peak), tolerance, mismatched
    )
