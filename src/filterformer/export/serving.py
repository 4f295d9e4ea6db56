"""An export (or a suite of them) as the model repository of an existing inference server.

- Triton Inference Server: ``<repo>/<name>/config.pbtxt`` and ``<repo>/<name>/1/model.onnx``
  (ONNX Runtime backend, ``platform: "onnxruntime_onnx"``) or ``1/model.xml`` + ``model.bin``
  (OpenVINO backend, ``backend: "openvino"``). The batch is Triton's (``max_batch_size``): the
  config lists each tensor without it, and ``scores`` (one value per image) as ``dims: [ 1 ]``
  reshaped to ``[ ]``, Triton's form for a tensor that has only the batch dimension.
- OpenVINO Model Server: ``<repo>/<name>/1/model.xml`` + ``.bin`` (or ``model.onnx``) and
  ``<repo>/config.json`` listing every model with its ``base_path`` relative to that file.

Each graph of the export is one model, named after the export (its category for a suite) and,
for an export of several graphs, the graph (``vial_query``, ``vial_local``). The server runs
graphs only: resizing, the way back to each image's size, the threshold and the float16
rescale stay with the client, and so does a NumPy step between two graphs (e.g. the retrieval
of reference images from the bank). The export's export.json (and bank file) is copied into the
first graph's model folder so that a client finds them there; docs: README, "Serving".
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filterformer.errors import DeployError
from filterformer.io import atomic_path, write_json
from filterformer.runtime.manifest import (
    EXPORT_FILE,
    choose_entry,
    graph_files,
    read_suite,
    require_manifest,
)
from filterformer.runtime.sessions import require

ENGINES = ("triton", "ovms")
MAX_BATCH = 8
"""Ours: Triton's ``max_batch_size``, the largest batch it forms (ff-predict's default)."""
VERSION = "1"
"""The one model version folder each model gets."""
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64"}
BACKENDS = {"triton": "onnxruntime", "ovms": "openvino"}
"""Engine -> the runtime whose export format it prefers (Triton: ONNX; OVMS: the IR)."""


def tensor_specs(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of a graph file: name, dtype and shape (None for a dynamic dim)."""
    if path.suffix == ".onnx":
        onnx = require("onnx")
        graph = onnx.load(str(path), load_external_data=False).graph
        mapping = onnx.helper.tensor_dtype_to_np_dtype

        def spec(value: Any) -> dict[str, Any]:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            return {"name": value.name, "dtype": str(mapping(tensor.elem_type)), "shape": dims}

        initializers = {init.name for init in graph.initializer}
        inputs = [spec(v) for v in graph.input if v.name not in initializers]
        return inputs, [spec(v) for v in graph.output]
    model = require("openvino").Core().read_model(str(path))

    def ov_spec(port: Any) -> dict[str, Any]:
        shape = [None if d.is_dynamic else d.get_length() for d in port.get_partial_shape()]
        return {
            "name": port.get_any_name(),
            "dtype": port.get_element_type().to_dtype().name,
            "shape": shape,
        }

    return [ov_spec(p) for p in model.inputs], [ov_spec(p) for p in model.outputs]


def _triton_tensor(spec: dict[str, Any]) -> str:
    """One tensor of config.pbtxt, without its batch dimension (see module doc)."""
    if spec["dtype"] not in TRITON_TYPES:
        raise DeployError(f"tensor {spec['name']!r}: no Triton type for {spec['dtype']}.")
    dims = [-1 if d is None else d for d in spec["shape"][1:]]
    reshape = "" if dims else "\n    reshape: { shape: [ ] }"
    shown = ", ".join(str(d) for d in dims or [1])
    return (
        f'  {{\n    name: "{spec["name"]}"\n    data_type: {TRITON_TYPES[spec["dtype"]]}\n'
        f"    dims: [ {shown} ]{reshape}\n  }}"
    )


def triton_config(name: str, model_file: Path) -> str:
    """config.pbtxt of one graph file (ONNX Runtime or OpenVINO backend)."""
    inputs, outputs = (",\n".join(map(_triton_tensor, specs)) for specs in tensor_specs(model_file))
    onnx = model_file.suffix == ".onnx"
    engine = 'platform: "onnxruntime_onnx"' if onnx else 'backend: "openvino"'
    return (
        f'name: "{name}"\n{engine}\nmax_batch_size: {MAX_BATCH}\n'
        f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
    )


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _exports(folder: Path) -> Iterator[tuple[str, Path]]:
    """(model name, export folder): the export itself, or each category of a suite."""
    suite = read_suite(folder)
    if suite is None:
        yield require_manifest(folder)["category"], folder
        return
    for category, sub in suite["categories"].items():
        yield category, folder / sub


def write_serving(folder: Path, repository: Path, engine: str) -> list[str]:
    """The model repository of ``engine`` for the export (or suite) in ``folder``; the names
    of the models written."""
    if engine not in ENGINES:
        raise DeployError(f"unknown serving engine {engine!r}; choose one of {', '.join(ENGINES)}.")
    names, ovms = [], []
    for category, export in _exports(folder):
        manifest = require_manifest(export)
        _, entry = choose_entry(export, manifest, BACKENDS[engine])
        graphs = [s for s in entry["stages"] if "graph" in s]
        for index, stage in enumerate(graphs):
            name = category if len(graphs) == 1 else f"{category}_{stage['graph']}"
            source = export / stage["file"]
            model_dir = repository / name
            version = model_dir / VERSION
            version.mkdir(parents=True, exist_ok=True)
            for file in graph_files(source):
                _copy(file, version / f"model{file.suffix}")
            if index == 0:
                _copy(export / EXPORT_FILE, model_dir / EXPORT_FILE)
                if entry.get("arrays"):
                    _copy(export / entry["arrays"], model_dir / entry["arrays"])
            if engine == "triton":
                config = triton_config(name, version / f"model{source.suffix}")
                with atomic_path(model_dir / "config.pbtxt") as tmp:
                    tmp.write_text(config)
            else:
                ovms.append({"config": {"name": name, "base_path": name}})
            names.append(name)
    if engine == "ovms":
        write_json(repository / "config.json", {"model_config_list": ovms})
    return names
