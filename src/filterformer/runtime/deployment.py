"""An export folder served without torch: images in; maps, scores and verdicts out.

:class:`Deployment` reads export.json and does everything around the exported graphs with
NumPy and OpenCV, by the same code the torch path runs (:class:`InputGeometry`, the tiling,
the way back to each image's size, the post-processing, the float16 rescale)::

    from filterformer.runtime import Deployment
    deployment = Deployment("runs/filterformer/vial/export")        # ONNX Runtime, no torch
    for result in deployment.predict(["part.png"]): print(result.score, result.anomalous)

A deployment needs the export folder only (export.json, the graph files, the bank file of a
model that retrieves references); the run folder, the training stack and the encoder weights
stay on the training machine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from filterformer.data.datasets import read_split
from filterformer.data.folder import file_samples
from filterformer.data.sample import Sample
from filterformer.data.tiling import tiling_from_record
from filterformer.data.transforms import InputGeometry
from filterformer.errors import ConfigError, DataError
from filterformer.evaluation.protocol import image_score
from filterformer.evaluation.thresholds import Threshold
from filterformer.inference.original_maps import original_size_maps
from filterformer.runtime.manifest import choose_entry, require_manifest
from filterformer.runtime.outputs import CategoryMaps, Prediction
from filterformer.runtime.pipeline import Pipeline, PipelineBackend
from filterformer.submission.rescale import MapRescale


class Deployment(CategoryMaps):
    """The export in ``folder``, loaded in ``backend`` (``onnxruntime`` or ``openvino``).

    ``model``: the exported file to run (a name listed in export.json; default: the first
    export the backend runs, OpenVINO preferring its IR). ``threads``: the runtime's
    intra-op threads (default: its own choice). ``data_root``: where :meth:`samples` reads the
    run's dataset (default: the root it was trained on). ``threshold``: one in score units for
    every split instead of the export's. Writing maps, masks, overlays, scores.csv and the
    histogram: :class:`~filterformer.runtime.outputs.CategoryMaps`.
    """

    def __init__(
        self,
        folder: str | Path,
        backend: str = "onnxruntime",
        *,
        model: str | None = None,
        threads: int | None = None,
        batch_size: int = 8,
        progress: bool = False,
        data_root: str | Path | None = None,
        threshold: float | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.manifest = manifest = require_manifest(self.folder)
        self.file, self.entry = choose_entry(self.folder, manifest, backend, model)
        self.backend = backend
        self.pipeline = Pipeline(self.folder, self.entry, backend, threads)
        self.category: str = manifest["category"]
        self.mode: str = manifest["mode"]
        self.image_score: str = manifest["image_score"]
        self.levels: int | None = manifest["smoothing"].get("levels")
        preprocessing = manifest["preprocessing"]
        self.geometry = InputGeometry.from_record(preprocessing)
        self.tiling = tiling_from_record(preprocessing.get("tiling"))
        self.threshold = Threshold.from_json(manifest["threshold"], f"{self.folder}: threshold")
        self.threshold_given = threshold is not None
        if threshold is not None:
            self.threshold = Threshold(float(threshold))  # "given"; one for every split
        self.rescale = MapRescale.from_dict(manifest["rescale"])
        self.postprocess: dict[str, Any] = dict(manifest.get("postprocess") or {})
        self.data: dict[str, Any] = dict(manifest.get("data") or {})
        self.batch_size, self.progress = batch_size, progress
        self.data_root = None if data_root is None else Path(data_root)
        self._validation: list[float] | None = None

    def maps(self, inputs: np.ndarray, modes: Sequence[str]) -> dict[str, np.ndarray]:
        """The map backend interface: B x h x w maps of B x 3 x h x w network inputs."""
        return PipelineBackend(self.pipeline, self.mode).maps(inputs, modes)

    def predict_maps(self, samples: Sequence[Any]) -> Iterator[tuple[Any, np.ndarray]]:
        """(sample, H x W float32 map at its original size) of each sample, in order."""
        for sample, maps in original_size_maps(
            self,
            samples,
            self.geometry,
            modes=(self.mode,),
            batch_size=self.batch_size,
            tiling=self.tiling,
            progress=self.progress,
            levels=self.levels,
        ):
            yield sample, maps[self.mode]

    def predict(
        self,
        images: Sequence[str | Path],
        *,
        threshold: float | None = None,
        split: str = "test",
    ) -> list[Prediction]:
        """Maps (original size), scores and verdicts of image files, in memory.

        ``threshold``: in score units; default the export's (that of ``split`` when the run
        has one of its own for it).
        """
        if isinstance(images, str | Path):
            images = [images]
        samples = file_samples([Path(p) for p in images], category=self.category)
        value = self.threshold.for_split(split).value if threshold is None else float(threshold)
        return self.predictions(samples, value)

    def samples(self, split: str) -> Sequence[Sample]:
        """The category's ``split`` of the run's dataset (under ``data_root`` if given)."""
        kind, root = self.data.get("kind"), self.data_root or self.data.get("root")
        if kind in (None, "folder"):
            raise ConfigError(
                f"{self.folder}: the run was trained on a folder of images, not a dataset "
                "with splits; score images with --images DIR."
            )
        return read_split(kind, root, self.category, split)

    def validation_scores(self) -> list[float]:
        """The image scores of the run's validation split (remembered; empty without one)."""
        if self._validation is None:
            try:
                samples = self.samples("validation")
            except (ConfigError, DataError):  # no dataset with splits, or no validation split
                samples = []
            maps = self.predict_maps(samples)
            self._validation = [image_score(amap, self.image_score) for _, amap in maps]
        return self._validation
