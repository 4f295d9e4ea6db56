"""Writing exported graphs as ONNX files or OpenVINO IRs, with float16 weights on request.

``--fp16`` means the same for both formats: weights are stored as float16 (about half the file)
and the runtimes compute in float32 on the CPU. ONNX: each float32 weight tensor becomes a
float16 initializer behind a Cast to float32 (ONNX Runtime folds the casts when it loads the
file). OpenVINO: ``save_model(compress_to_fp16=True)``, which stores the same thing. The maps
then differ from torch by the rounding of the weights only, which the parity check bounds with
its float16 tolerance.

Files are written into a staging folder beside ``--out`` and moved into place only after the
parity check passed (:func:`staged`): a failed export leaves nothing at ``--out``, and an
earlier export there stays as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from filterformer.errors import DeployError
from filterformer.io import PARTIAL_MARK
from filterformer.runtime.manifest import FORMAT_FILES as FORMATS
from filterformer.runtime.manifest import graph_files
from filterformer.runtime.sessions import require

MIN_FP16_ELEMENTS = 16
"""Smaller float32 constants (fusion statistics, blur kernels, eps) stay float32."""


def check_out_path(out: Path, fmt: str) -> None:
    """Refuse an output name whose suffix does not fit the format."""
    suffix = FORMATS[fmt]
    if out.suffix != suffix:
        raise DeployError(
            f"--out {out}: a {fmt} export is written as a {suffix} file; e.g. "
            f"--out {out.with_suffix(suffix)}."
        )


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A staging folder beside ``out``, removed on leaving whatever happened."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.stem}{PARTIAL_MARK}", dir=out.parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def move_into_place(staged: Sequence[Path], folder: Path) -> None:
    """Move staged files into ``folder`` under their names, the listed ones last (an OpenVINO
    .bin before its .xml, a bank before the graphs that read it)."""
    for source in reversed([f for path in staged for f in graph_files(path)]):
        os.replace(source, folder / source.name)


def weights_to_float16(source: Path, target: Path) -> None:
    """Copy an ONNX file with its float32 weight tensors stored as float16 (see module doc)."""
    onnx = require("onnx")
    model = onnx.load(str(source))
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        weights = onnx.numpy_helper.to_array(init)
        half = weights.astype(np.float16)
        if weights.size < MIN_FP16_ELEMENTS or not np.isfinite(half).all():
            continue
        name = init.name
        init.CopyFrom(onnx.numpy_helper.from_array(half, f"{name}.fp16"))
        casts.append(
            onnx.helper.make_node("Cast", [f"{name}.fp16"], [name], to=onnx.TensorProto.FLOAT)
        )
    nodes = [*casts, *graph.node]  # casts before every use: the order stays topological
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(target))


def onnx_to_openvino(source: Path, target: Path, *, fp16: bool = False) -> None:
    """Convert an ONNX file to an OpenVINO IR (``target`` .xml and its .bin)."""
    ov = require("openvino")
    ov.save_model(ov.convert_model(str(source)), str(target), compress_to_fp16=fp16)
