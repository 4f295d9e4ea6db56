"""An export folder served without torch: images in; maps, scores and verdicts out.

:class:`Deployment` reads export.json and does everything around the exported graphs with
NumPy and OpenCV, by the same code the torch path runs (:class:`InputGeometry`, the tiling,
the way back to each image's size, the post-processing, the float16 rescale)::

    from filterformer.runtime import Deployment
    deployment = Deployment("runs/filterformer/vial/export")        # ONNX Runtime, no torch
    for result in deployment.predict(["part.png"]): print(result.name, result.score, result.verdict)

A deployment needs the export folder only (export.json, the graph files, the bank file of a
model that retrieves references); the run folder, the training stack and the encoder weights
stay on the training machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from filterformer.data.datasets import read_split
from filterformer.data.sample import Sample
from filterformer.data.tiling import tiling_from_record
from filterformer.data.transforms import InputGeometry
from filterformer.errors import ConfigError
from filterformer.evaluation.protocol import image_score
from filterformer.evaluation.thresholds import Threshold
from filterformer.inference.original_maps import original_size_maps
from filterformer.inference.postprocess import postprocess, settings_for_split
from filterformer.io import read_image
from filterformer.runtime.manifest import choose_entry, require_manifest
from filterformer.runtime.pipeline import Pipeline, PipelineBackend
from filterformer.runtime.writing import write_maps
from filterformer.submission.rescale import MapRescale


@dataclass(frozen=True)
class Prediction:
    """One image's result: its map (original size, the model's units), score and verdict."""

    name: str
    map: np.ndarray
    """H x W float32 at the image's original size; compare with ``Deployment.threshold``."""
    score: float
    """The image score of the map (the run's rule: max, or the mean of the top 1 %)."""
    mask: np.ndarray
    """H x W bool: map > threshold, post-processed as the run's category says."""

    @property
    def verdict(self) -> str:
        """``anomalous`` when any pixel of the mask is set, else ``normal`` (as ff-predict)."""
        return "anomalous" if self.mask.any() else "normal"


@dataclass(frozen=True)
class _ArrayImage:
    """An image given as an H x W x 3 uint8 RGB array (for :func:`original_size_maps`)."""

    name: str
    image: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[:2]

    def load_image(self) -> np.ndarray:
        return self.image


def _as_image(item: str | Path | np.ndarray, index: int) -> _ArrayImage:
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise ConfigError(
                f"image {index}: an array must be H x W x 3 uint8 RGB, got {item.shape} "
                f"{item.dtype}; convert it (e.g. cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))."
            )
        return _ArrayImage(f"image_{index}", item)
    return _ArrayImage(Path(item).name, read_image(item))


class Deployment:
    """The export in ``folder``, loaded in ``backend`` (``onnxruntime`` or ``openvino``).

    ``model``: the exported file to run (a name listed in export.json; default: the first
    export the backend runs, OpenVINO preferring its IR). ``threads``: the runtime's
    intra-op threads (default: its own choice). ``data_root``: where :meth:`samples` reads the
    run's dataset (default: the root it was trained on).
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
    ) -> None:
        self.folder = Path(folder)
        self.manifest = manifest = require_manifest(self.folder)
        self.file, self.entry = choose_entry(self.folder, manifest, backend, model)
        self.backend = backend
        self.pipeline = Pipeline(self.folder, self.entry, backend, threads)
        self.category: str = manifest["category"]
        self.mode: str = manifest["mode"]
        self.image_score: str = manifest["image_score"]
        preprocessing = manifest["preprocessing"]
        self.geometry = InputGeometry.from_record(preprocessing)
        self.tiling = tiling_from_record(preprocessing.get("tiling"))
        self.threshold = Threshold.from_json(manifest["threshold"], f"{self.folder}: threshold")
        self.rescale = MapRescale.from_dict(manifest["rescale"])
        self.postprocess: dict[str, Any] = dict(manifest.get("postprocess") or {})
        self.data: dict[str, Any] = dict(manifest.get("data") or {})
        self.batch_size, self.progress = batch_size, progress
        self.data_root = None if data_root is None else Path(data_root)

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
        ):
            yield sample, maps[self.mode]

    def predict(
        self, images: Iterable[str | Path | np.ndarray], split: str = "test"
    ) -> list[Prediction]:
        """Maps, scores and verdicts of image files or H x W x 3 uint8 RGB arrays.

        ``split`` picks the threshold and post-processing of that split when the run has
        its own for it (e.g. ``test_private_mixed``).
        """
        sources = [_as_image(item, i) for i, item in enumerate(images)]
        threshold = self.threshold.for_split(split).value
        settings = settings_for_split(self.postprocess, split)
        results = []
        for source, amap in self.predict_maps(sources):
            mask = postprocess(amap > threshold, image=source.image, **settings)
            results.append(Prediction(source.name, amap, image_score(amap, self.image_score), mask))
        return results

    def samples(self, split: str) -> Sequence[Sample]:
        """The category's ``split`` of the run's dataset (under ``data_root`` if given)."""
        kind, root = self.data.get("kind"), self.data_root or self.data.get("root")
        if kind in (None, "folder"):
            raise ConfigError(
                f"{self.folder}: the run was trained on a folder of images, not a dataset "
                "with splits; score images with --images DIR."
            )
        return read_split(kind, root, self.category, split)

    def export(
        self,
        samples: Sequence[Sample],
        out: Path,
        overlays: bool = False,
        record: Path | None = None,
    ) -> int:
        """Write maps and masks of ``samples`` under ``out`` as ff-predict does; how many."""
        return write_maps(
            self.predict_maps,
            samples,
            out,
            category=self.category,
            rescale=self.rescale,
            threshold=self.threshold,
            postprocess=self.postprocess,
            overlays=overlays,
            record=record,
        )
