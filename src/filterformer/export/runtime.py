"""Running an exported map graph in ONNX Runtime or OpenVINO on the CPU.

A session takes float32 B x 3 x h x w normalised inputs (NumPy) and returns the graph's
(maps, scores). :class:`ExportedBackend` puts a session behind the
:class:`~filterformer.inference.predict.MapBackend` interface, so ff-predict's reading,
tiling, way back to the original size and writing are the same for every backend.

OpenVINO runs with ``INFERENCE_PRECISION_HINT=f32``: on CPUs with bfloat16 units its default
is bfloat16, whose maps differ from torch's by about 1e-2.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from filterformer.errors import ConfigError, DeployError
from filterformer.export.formats import require
from filterformer.export.graph import INPUT_NAME, OUTPUT_NAMES

BACKENDS = ("torch", "onnxruntime", "openvino")
RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}
"""Export format -> the runtime its parity check runs in."""


class Session(Protocol):
    """An exported graph, loaded: inputs -> (maps B x h x w, scores B)."""

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class OnnxRuntimeSession:
    """An .onnx file in ONNX Runtime's CPU provider."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return maps, scores


class OpenVinoSession:
    """An OpenVINO IR (.xml) or an .onnx file, compiled for the CPU in float32."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ov = require("openvino")
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.compiled(images)
        return result[OUTPUT_NAMES[0]], result[OUTPUT_NAMES[1]]


def open_session(path: Path, backend: str, threads: int | None = None) -> Session:
    """Load ``path`` in ``backend`` (``onnxruntime`` or ``openvino``)."""
    if not path.is_file():
        raise DeployError(f"{path}: exported model not found; make it with ff-export.")
    if backend == "onnxruntime":
        if path.suffix != ".onnx":
            raise DeployError(
                f"{path}: ONNX Runtime runs .onnx files; run this OpenVINO IR with "
                "--backend openvino."
            )
        return OnnxRuntimeSession(path, threads)
    if backend == "openvino":
        return OpenVinoSession(path, threads)
    raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")


class ExportedBackend:
    """A :class:`Session` as a map backend; it gives the one fusion mode it was exported with."""

    def __init__(self, session: Session, mode: str) -> None:
        self.session = session
        self.mode = mode

    def maps(self, inputs: torch.Tensor, modes: Sequence[str]) -> dict[str, np.ndarray]:
        """The exported mode's maps (other modes would need another export)."""
        other = sorted(set(modes) - {self.mode})
        if other:
            raise ConfigError(
                f"the exported graph gives fusion mode {self.mode!r} only, not {other}; "
                "export the run again after changing its mode, or use --backend torch."
            )
        images = np.ascontiguousarray(inputs.detach().cpu().numpy(), dtype=np.float32)
        return {self.mode: self.session(images)[0]}
