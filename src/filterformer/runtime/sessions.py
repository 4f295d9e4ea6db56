"""One exported graph loaded in ONNX Runtime or OpenVINO on the CPU: named arrays in and out.

A session takes the graph's inputs by name (NumPy arrays: float32 images, float16 reference
descriptors, ...) and returns the outputs asked for, in that order.

OpenVINO runs with ``INFERENCE_PRECISION_HINT=f32``: on CPUs with bfloat16 units its default
is bfloat16, whose maps differ from torch's by about 1e-2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np

from filterformer.errors import ConfigError, DeployError

BACKENDS = ("onnxruntime", "openvino")
"""The runtimes an export runs in (ff-predict adds ``torch``, the model itself)."""
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "openvino": "openvino"}
"""Python module -> the filterformer extra that installs it."""


def require(module: str) -> ModuleType:
    """Import an optional runtime package, or say which extra installs it."""
    try:
        return import_module(module)
    except ImportError:
        extra = EXTRAS[module]
        raise DeployError(
            f"this needs the Python package {module!r}, which is not installed; "
            f"pip install 'filterformer[{extra}]'."
        ) from None


class Session(Protocol):
    """An exported graph, loaded: named input arrays -> the named outputs, in order."""

    def __call__(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> list[np.ndarray]: ...


class OnnxRuntimeSession:
    """An .onnx file in ONNX Runtime's CPU provider."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> list[np.ndarray]:
        return self.session.run(list(outputs), dict(inputs))


class OpenVinoSession:
    """An OpenVINO IR (.xml) or an .onnx file, compiled for the CPU in float32."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ov = require("openvino")
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)

    def __call__(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> list[np.ndarray]:
        result = self.compiled(dict(inputs))
        return [result[name] for name in outputs]


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
