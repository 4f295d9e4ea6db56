"""Maps during training: validation statistics for fusion, and per-mode scores on a GT split.

Scores come from :func:`predict_maps`, the same pipeline ff-eval and ff-predict use (fusion,
smoothing, tiling, original size), so the checkpoint chosen for a mode is the best one for
the maps that mode will really produce.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import chain

import numpy as np
import torch

from filterformer.data.sample import Sample
from filterformer.data.tiling import AnyTiling
from filterformer.data.transforms import InputGeometry
from filterformer.evaluation.aupro import ProAccumulator
from filterformer.evaluation.image_metrics import f1_max
from filterformer.evaluation.thresholds import MapMoments
from filterformer.inference.predict import DEFAULT_SMOOTHING, Smoothing, predict_mode_maps
from filterformer.progress import progress_bar
from filterformer.training.loop import Evaluation

METRICS = ("au_pro", "f1_max")
"""What :class:`FusionEvaluator` reports per mode (``eval.metric`` picks one for selection)."""


def _network_inputs(samples: Sequence[Sample], tiling: AnyTiling | None) -> Iterator[np.ndarray]:
    """Every whole image, or every tile of every image, that the network will see."""
    for sample in samples:
        image = sample.load_image()
        if tiling is None:
            yield image
        else:
            for y0, x0, y1, x1 in tiling.tiles(*sample.shape):
                yield image[y0:y1, x0:x1]


@torch.no_grad()
def map_statistics(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    geometry: InputGeometry,
    *,
    tiling: AnyTiling | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, tuple[float, float]]:
    """(mean, std) of each raw map (``model.anomaly_maps``) over ``samples`` (validation images).

    These normalise the maps before fusion (:func:`fuse_maps`), so they are taken on the same
    network inputs as at inference: whole images, or tiles when the category is tiled.
    """
    return pooled_map_statistics(
        model,
        [(samples, tiling)],
        geometry,
        device=device,
        batch_size=batch_size,
        progress=progress,
    )


@torch.no_grad()
def pooled_map_statistics(
    model: torch.nn.Module,
    parts: Sequence[tuple[Sequence[Sample], AnyTiling | None]],
    geometry: InputGeometry,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, tuple[float, float]]:
    """:func:`map_statistics` over several categories' validation images, each with its tiling
    (one model trained on all of them normalises its maps by one set of statistics)."""
    moments: dict[str, MapMoments] = {}
    batch: list[torch.Tensor] = []

    def flush() -> None:
        maps = model.anomaly_maps(torch.stack(batch).to(device))
        for name, amaps in maps.items():
            for amap in amaps.float().cpu().numpy():
                moments.setdefault(name, MapMoments()).update(amap)
        batch.clear()

    inputs = chain.from_iterable(_network_inputs(samples, tiling) for samples, tiling in parts)
    count = sum(
        1 if tiling is None else len(list(tiling.tiles(*s.shape)))
        for samples, tiling in parts
        for s in samples
    )
    bar = progress_bar(inputs, total=count, desc="map statistics", enabled=progress, unit="img")
    for image in bar:
        batch.append(geometry.to_tensor(image))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return {name: (m.mean, m.std) for name, m in moments.items()}


class FusionEvaluator:
    """Scores every fusion mode of a model on a split with ground truth.

    Each call recomputes the validation statistics (the model changed since the last call),
    then accumulates AU-PRO (up to ``pro_limit``) and the pooled pixel F1-max (an oracle: it
    reads the split's GT, as the Filter-Former report's selection on test_public does) per mode.
    """

    def __init__(
        self,
        validation: Sequence[Sample],
        test: Sequence[Sample],
        geometry: InputGeometry,
        *,
        tiling: AnyTiling | None = None,
        smoothing: Smoothing = DEFAULT_SMOOTHING,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        pro_limit: float = 0.05,
        progress: bool = False,
    ) -> None:
        self.validation = validation
        self.test = test
        self.geometry = geometry
        self.tiling = tiling
        self.smoothing = smoothing
        self.device = device
        self.batch_size = batch_size
        self.pro_limit = pro_limit
        self.progress = progress

    def __call__(self, model: torch.nn.Module) -> Evaluation:
        stats = map_statistics(model, self.validation, self.geometry, **self._common())
        return Evaluation(self.scores(model, stats), stats)

    def _common(self) -> dict:
        return dict(
            tiling=self.tiling,
            device=self.device,
            batch_size=self.batch_size,
            progress=self.progress,
        )

    def scores(
        self, model: torch.nn.Module, stats: dict[str, tuple[float, float]]
    ) -> dict[str, dict[str, float]]:
        """{mode: {metric: value}} of the test split, the maps fused with ``stats``."""
        maps = predict_mode_maps(
            model,
            self.test,
            self.geometry,
            modes=model.fusion_modes,
            map_stats=stats,
            smoothing=self.smoothing,
            **self._common(),
        )
        accumulators = {mode: ProAccumulator() for mode in model.fusion_modes}
        for sample, by_mode in maps:
            gt = sample.load_mask()
            for mode, amap in by_mode.items():
                accumulators[mode].update(amap, gt, name=str(sample.path))
        return {mode: self._scores(acc) for mode, acc in accumulators.items()}

    def _scores(self, acc: ProAccumulator) -> dict[str, float]:
        pro = acc.compute((self.pro_limit,)).au_pro[self.pro_limit]
        return {"au_pro": float(pro), "f1_max": float(f1_max(acc.pixel_counts()).counts.f1)}


class MultiClassEvaluator:
    """Scores every fusion mode of a model trained on several categories: each category's
    :class:`FusionEvaluator` with the model's pooled statistics, then the unweighted mean
    over the categories per mode and metric (as the INP-Former code reports its mean row)."""

    def __init__(
        self,
        evaluators: Sequence[FusionEvaluator],
        statistics: Callable[[torch.nn.Module], dict[str, tuple[float, float]]],
    ) -> None:
        self.evaluators = evaluators
        self.statistics = statistics

    def __call__(self, model: torch.nn.Module) -> Evaluation:
        stats = self.statistics(model)
        scored = [evaluator.scores(model, stats) for evaluator in self.evaluators]
        mean = {
            mode: {metric: float(np.mean([s[mode][metric] for s in scored])) for metric in metrics}
            for mode, metrics in scored[0].items()
        }
        return Evaluation(mean, stats)
