"""An export entry's stages run in order: graphs in a runtime, NumPy steps in between.

The stages work on named arrays: the first graph reads ``images`` (normalised float32
B x 3 x h x w network inputs), each stage adds its outputs, and the last one gives ``maps``
(B x h x w at network resolution, fused and smoothed) and ``scores`` (B image scores).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from filterformer.errors import ConfigError, DeployError
from filterformer.runtime.manifest import entry_files
from filterformer.runtime.ops import OPS
from filterformer.runtime.sessions import Session, open_session

IMAGES, MAPS, SCORES = "images", "maps", "scores"


class Pipeline:
    """The stages of one export entry of ``folder``, loaded in ``backend``."""

    def __init__(
        self, folder: Path, entry: Mapping[str, Any], backend: str, threads: int | None = None
    ) -> None:
        missing = [str(f) for f in entry_files(folder, dict(entry)) if not f.is_file()]
        if missing:
            raise DeployError(
                f"{folder}: the export lacks {', '.join(missing)}; copy the whole export folder "
                "or export again with ff-export."
            )
        self.stages = list(entry["stages"])
        unknown = sorted({s["op"] for s in self.stages if "op" in s} - set(OPS))
        if unknown:
            raise DeployError(
                f"{folder}: the export runs steps {unknown} that this filterformer does not "
                "know; update filterformer on this machine."
            )
        self.sessions: dict[str, Session] = {
            s["graph"]: open_session(folder / s["file"], backend, threads)
            for s in self.stages
            if "graph" in s
        }
        self.arrays = load_file(str(folder / entry["arrays"])) if entry.get("arrays") else {}

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every named array the stages make from B x 3 x h x w float32 ``images``."""
        env = {IMAGES: np.ascontiguousarray(images, dtype=np.float32)}
        for stage in self.stages:
            if "graph" in stage:
                outputs = self.sessions[stage["graph"]](
                    {name: env[name] for name in stage["inputs"]}, stage["outputs"]
                )
            else:
                arrays = {key: self.arrays[name] for key, name in stage["arrays"].items()}
                result = OPS[stage["op"]](
                    *(env[name] for name in stage["inputs"]), **arrays, **stage["settings"]
                )
                outputs = result if isinstance(result, tuple) else (result,)
            env.update(zip(stage["outputs"], outputs, strict=True))
        return env

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(maps, scores) of B x 3 x h x w float32 ``images``."""
        env = self.run(images)
        return env[MAPS], env[SCORES]


class PipelineBackend:
    """A pipeline as a map backend (:mod:`filterformer.inference.original_maps`): it gives the
    one fusion mode it was exported with."""

    def __init__(self, pipeline: Pipeline, mode: str) -> None:
        self.pipeline = pipeline
        self.mode = mode

    def maps(self, inputs: np.ndarray, modes: Sequence[str]) -> dict[str, np.ndarray]:
        """The exported mode's maps (other modes would need another export)."""
        other = sorted(set(modes) - {self.mode})
        if other:
            raise ConfigError(
                f"the exported graph gives fusion mode {self.mode!r} only, not {other}; "
                "export the run again after changing its mode, or use --backend torch."
            )
        return {self.mode: self.pipeline(inputs)[0]}
