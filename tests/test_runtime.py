"""The torch-free runtime: it imports without torch, its NumPy steps equal CPR's torch
retrieval, its pipelines chain graphs and steps by name, and the serving layouts it feeds
follow Triton's and OpenVINO Model Server's rules.

The exports of trained runs (CPR, EAR, FADeR, a suite) are in tests/test_runtime_e2e.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.numpy import save_file

import filterformer
from filterformer.data.tiling import GridTiling, Tiling, tiling_from_record
from filterformer.data.transforms import InputGeometry
from filterformer.errors import DeployError
from filterformer.export.serving import write_serving
from filterformer.models.cpr import retrieval
from filterformer.runtime.manifest import EXPORT_FILE, FORMAT_VERSION
from filterformer.runtime.ops import block_histograms, gather, retrieve, trimmed_kl
from filterformer.runtime.pipeline import Pipeline

SRC = Path(filterformer.__file__).resolve().parents[1]
BLOCK_TORCH = """
import sys

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this process")

sys.meta_path.insert(0, BlockTorch())
"""


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing torch fails."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, env=env
    )


def test_the_runtime_and_ff_predict_import_without_torch():
    code = (
        "import filterformer.runtime, filterformer.runtime.deployment, filterformer.cli.predict\n"
        "print('torch' in sys.modules)\n"
    )
    done = run_without_torch(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# ------------------------------------------------------------------------ the NumPy steps


def test_block_histograms_count_words_per_block_with_a_padding_bin():
    """The CPR code's layout: bin 0 is padding, word v is bin v + 1, the grid padded at the
    top and left, blocks row by row."""
    words = np.array([[[0, 1, 1], [1, 2, 0], [2, 2, 2]]])  # 3 x 3 -> 4 x 4, blocks of 2 x 2
    hist = block_histograms(words, num_words=3, blocks=2)
    assert hist.shape == (1, 4, 4) and hist.dtype == np.float32
    np.testing.assert_allclose(hist[0, 0], [3 / 4, 1 / 4, 0, 0])  # pad pad / pad 0
    np.testing.assert_allclose(hist[0, 1], [2 / 4, 0, 2 / 4, 0])  # pad pad / 1 1
    np.testing.assert_allclose(hist[0, 2], [2 / 4, 0, 1 / 4, 1 / 4])  # pad 1 / pad 2
    np.testing.assert_allclose(hist[0, 3], [0, 1 / 4, 0, 3 / 4])  # 2 0 / 2 2
    np.testing.assert_allclose(hist.sum(-1), 1.0)


def test_the_numpy_retrieval_equals_cpr_torch_retrieval():
    rng = np.random.default_rng(0)
    words = rng.integers(0, 12, (5, 20, 26))
    references = rng.integers(0, 12, (9, 20, 26))
    ours = block_histograms(words, 12, 5)
    torch_hist = retrieval.block_histograms(torch.from_numpy(words), 12, 5).numpy()
    np.testing.assert_array_equal(ours, torch_hist)
    bank = block_histograms(references, 12, 5)
    kl = trimmed_kl(ours, bank, kept=20, eps=retrieval.KL_EPS)
    torch_kl = retrieval.trimmed_kl(torch.from_numpy(ours), torch.from_numpy(bank), 20).numpy()
    np.testing.assert_allclose(kl, torch_kl, rtol=1e-12)
    nearest = retrieve(
        words, histograms=bank, num_words=12, blocks=5, kept=20, top_k=3, eps=retrieval.KL_EPS
    )
    torch_nearest = retrieval.retrieve(torch.from_numpy(torch_kl), 3).numpy()
    np.testing.assert_array_equal(np.sort(nearest, 1), np.sort(torch_nearest, 1))
    assert nearest.shape == (5, 3)


def test_an_image_retrieves_itself_first():
    rng = np.random.default_rng(1)
    references = rng.integers(0, 6, (7, 10, 10))
    bank = block_histograms(references, 6, 2)
    nearest = retrieve(
        references[[4, 2]], histograms=bank, num_words=6, blocks=2, kept=3, top_k=2, eps=1e-8
    )
    assert nearest[:, 0].tolist() == [4, 2]


def test_gather_takes_the_rows_of_the_retrieved_references():
    table = np.arange(5 * 2, dtype=np.float16).reshape(5, 2)
    rows = gather(np.array([[4, 0], [1, 1]]), table=table)
    assert rows.shape == (2, 2, 2) and rows.dtype == np.float16
    np.testing.assert_array_equal(rows[0, 0], [8, 9])
    np.testing.assert_array_equal(rows[1, 1], [2, 3])


# ---------------------------------------------------------------------- the pipeline


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _two_graphs(folder: Path) -> dict:
    """An export of two hand-made graphs around a gather step: ``first`` gives each pixel's
    brightest channel, the step looks its value up in a table, ``last`` scores the max."""
    folder.mkdir(parents=True, exist_ok=True)
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, 2, 2])
    words = helper.make_tensor_value_info("words", TensorProto.INT64, ["b", 2, 2])
    argmax = helper.make_node("ArgMax", ["images"], ["words"], axis=1, keepdims=0)
    _save(helper.make_graph([argmax], "first", [images], [words]), folder / "m.first.onnx")
    rows = helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["b", 2, 2])
    maps = helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["b", 2, 2])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])
    nodes = [
        helper.make_node("Identity", ["rows"], ["maps"]),
        helper.make_node("ReduceMax", ["rows", "axes"], ["scores"], keepdims=0),
    ]
    last = helper.make_graph(nodes, "last", [rows], [maps, scores], initializer=[axes])
    _save(last, folder / "m.last.onnx")
    save_file({"table": np.array([10.0, 20.0, 30.0], dtype=np.float32)}, str(folder / "m.bank"))
    return {
        "format": "onnx",
        "stages": [
            {"graph": "first", "file": "m.first.onnx", "inputs": ["images"], "outputs": ["words"]},
            {
                "op": "gather",
                "inputs": ["words"],
                "outputs": ["rows"],
                "arrays": {"table": "table"},
                "settings": {},
            },
            {
                "graph": "last",
                "file": "m.last.onnx",
                "inputs": ["rows"],
                "outputs": ["maps", "scores"],
            },
        ],
        "arrays": "m.bank",
    }


def test_a_pipeline_runs_its_graphs_and_steps_in_order_by_name(tmp_path):
    pipeline = Pipeline(tmp_path, _two_graphs(tmp_path), "onnxruntime")
    images = np.zeros((2, 3, 2, 2), dtype=np.float32)
    images[0, 2, 0, 1] = 1.0  # image 0: channel 2 brightest at (0, 1), channel 0 elsewhere
    images[1, 1] = 1.0  # image 1: channel 1 everywhere
    maps, scores = pipeline(images)
    np.testing.assert_array_equal(maps[0], [[10, 30], [10, 10]])
    np.testing.assert_array_equal(maps[1], np.full((2, 2), 20))
    np.testing.assert_array_equal(scores, [30, 20])
    assert set(pipeline.run(images)) == {"images", "words", "rows", "maps", "scores"}


def test_a_pipeline_refuses_an_incomplete_export_or_an_unknown_step(tmp_path):
    entry = _two_graphs(tmp_path)
    (tmp_path / "m.bank").unlink()
    with pytest.raises(DeployError, match="the export lacks .*m.bank; copy the whole export"):
        Pipeline(tmp_path, entry, "onnxruntime")
    entry = _two_graphs(tmp_path)
    entry["stages"][1]["op"] = "teleport"
    with pytest.raises(DeployError, match=r"steps \['teleport'\] that this filterformer"):
        Pipeline(tmp_path, entry, "onnxruntime")


# ------------------------------------------------------------------ records of the geometry


@pytest.mark.parametrize(
    "geometry",
    [
        InputGeometry((28, 42), (28, 28), interpolation="bilinear"),
        InputGeometry((28, 42), fit="pad"),
        InputGeometry((56, 70), interpolation="pil_bilinear"),
    ],
)
def test_a_geometry_record_rebuilds_the_same_inputs_and_way_back(geometry):
    again = InputGeometry.from_record(json.loads(json.dumps(geometry.record())))
    image = np.random.default_rng(0).integers(0, 256, (50, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(again.to_array(image), geometry.to_array(image))
    amap = np.random.default_rng(1).random(geometry.input_size, dtype=np.float32)
    np.testing.assert_array_equal(
        again.to_original(amap, (50, 64)), geometry.to_original(amap, (50, 64))
    )
    assert np.array_equal(geometry.to_tensor(image).numpy(), geometry.to_array(image))


@pytest.mark.parametrize("tiling", [Tiling((32, 40), 0.25), GridTiling([2, 3], [[1, 1], [2, 3]])])
def test_a_tiling_record_rebuilds_the_same_tiling(tiling):
    again = tiling_from_record(json.loads(json.dumps(tiling.record())))
    assert repr(again) == repr(tiling) and again.tiles(100, 90) == tiling.tiles(100, 90)
    assert tiling_from_record(None) is None


# --------------------------------------------------------------------- serving layouts


def _export_folder(folder: Path, entry: dict, category: str) -> Path:
    manifest = {"format_version": FORMAT_VERSION, "category": category, "files": {"m": entry}}
    (folder / EXPORT_FILE).write_text(json.dumps(manifest))
    return folder


def _graph_io(path: Path) -> tuple[dict, dict]:
    """(inputs, outputs) of an ONNX file: name -> (elem type, dims), read with onnx itself."""
    graph = onnx.load(str(path)).graph

    def dims(value):
        return [d.dim_value or -1 for d in value.type.tensor_type.shape.dim]

    def table(values):
        return {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in values}

    return table(graph.input), table(graph.output)


TRITON_TYPES = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.INT64: "TYPE_INT64"}


def check_triton_repository(repository: Path) -> list[str]:
    """Triton's model repository rules (docs: model_repository.md, model_configuration.md):
    one folder per model holding config.pbtxt and numeric version folders; the config's name
    is the folder's; the ONNX Runtime platform reads ``<version>/model.onnx``; with
    ``max_batch_size`` > 0 every tensor is listed without its batch dimension, a tensor of the
    batch dimension alone as dims [ 1 ] reshaped to [ ]; names, types and dims match the
    model file."""
    problems, models = [], [p for p in repository.iterdir() if p.is_dir()]
    for model in models:
        config = (model / "config.pbtxt").read_text()
        if re.search(r'^name: "([^"]+)"', config, re.M)[1] != model.name:
            problems.append(f"{model.name}: config name differs from its folder")
        if 'platform: "onnxruntime_onnx"' not in config:
            problems.append(f"{model.name}: not the ONNX Runtime platform")
        versions = [v for v in model.iterdir() if v.is_dir()]
        if not versions or not all(v.name.isdigit() and int(v.name) > 0 for v in versions):
            problems.append(f"{model.name}: version folders must be positive integers")
        batch = int(re.search(r"^max_batch_size: (\d+)", config, re.M)[1])
        inputs, outputs = _graph_io(versions[0] / "model.onnx")
        blocks = re.findall(
            r"name: \"([^\"]+)\"\s+data_type: (\w+)\s+dims: \[ ([^\]]*) \]"
            r"(\s+reshape: \{ shape: \[ \] \})?",
            config,
        )
        listed = {
            name: (kind, [int(d) for d in dims.split(", ")], bool(reshape))
            for name, kind, dims, reshape in blocks
        }
        if set(listed) != {*inputs, *outputs}:
            problems.append(f"{model.name}: tensors {sorted(listed)} are not the graph's")
        for name, (elem, shape) in {**inputs, **outputs}.items():
            kind, dims, reshape = listed.get(name, (None, None, None))
            want = shape[1:] if batch > 0 else shape
            if kind != TRITON_TYPES[elem] or (dims, reshape) != (want or [1], not want):
                problems.append(f"{model.name}.{name}: {kind} {dims} for {elem} {shape}")
    return problems


def check_ovms_repository(repository: Path) -> list[str]:
    """OpenVINO Model Server's rules (docs: models_repository, parameters): config.json's
    model_config_list holds each model's name and base_path (relative paths are relative to
    config.json), whose sub-folders are positive integer versions holding a .xml with its .bin
    or a .onnx."""
    problems = []
    for item in json.loads((repository / "config.json").read_text())["model_config_list"]:
        config = item["config"]
        base = repository / config["base_path"]
        versions = [v for v in base.iterdir() if v.is_dir()]
        if not config.get("name") or not versions:
            problems.append(f"{config}: no name or no version folder")
        for version in versions:
            files = {f.suffix for f in version.iterdir()}
            if not version.name.isdigit() or not ({".xml", ".bin"} <= files or ".onnx" in files):
                problems.append(f"{version}: not a version folder with a model")
    return problems


def test_serving_layouts_follow_triton_and_ovms_rules(tmp_path):
    export = _export_folder(tmp_path / "vial", _two_graphs(tmp_path / "vial"), "vial")
    names = write_serving(export, tmp_path / "triton", "triton")
    assert names == ["vial_first", "vial_last"]
    assert check_triton_repository(tmp_path / "triton") == []
    config = (tmp_path / "triton" / "vial_last" / "config.pbtxt").read_text()
    assert 'name: "scores"\n    data_type: TYPE_FP32\n    dims: [ 1 ]\n    reshape' in config
    assert (tmp_path / "triton" / "vial_first" / EXPORT_FILE).is_file()  # for the client
    assert (tmp_path / "triton" / "vial_first" / "m.bank").is_file()
    write_serving(export, tmp_path / "ovms", "ovms")
    assert check_ovms_repository(tmp_path / "ovms") == []
    listed = json.loads((tmp_path / "ovms" / "config.json").read_text())["model_config_list"]
    assert [m["config"]["name"] for m in listed] == names


def test_a_wrong_layout_is_caught_by_the_checks(tmp_path):
    export = _export_folder(tmp_path / "vial", _two_graphs(tmp_path / "vial"), "vial")
    write_serving(export, tmp_path / "triton", "triton")
    config = tmp_path / "triton" / "vial_last" / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 1 ]", "dims: [ -1 ]"))
    (tmp_path / "triton" / "vial_first" / "1").rename(tmp_path / "triton" / "vial_first" / "v1")
    assert sorted(check_triton_repository(tmp_path / "triton")) == [
        "vial_first: version folders must be positive integers",
        "vial_last.scores: TYPE_FP32 [-1] for 1 [-1]",
    ]
