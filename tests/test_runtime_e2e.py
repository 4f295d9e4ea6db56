"""End to end: CPR, EAR and FADeR runs export with their parity checked, and the torch-free
runtime writes the files the torch model writes; a suite of two families deploys as one folder
and writes a checked submission in a process where torch cannot be imported.

Tiny runs (the suite's CPR category, vial, with its foreground branch; conftest's EAR and FADeR
runs, the demo preset on a few 56 x 70 images), each trained and exported once: these check the
export and the runtime, not how well the models detect.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from safetensors.numpy import load_file

from conftest import TINY_CPR, TINY_SUITE, ff_train
from filterformer.cli.export import main as export_cli
from filterformer.cli.predict import main as predict_cli
from filterformer.data.synthetic import make_synthetic_category
from filterformer.export.parity import FP32_TOLERANCE
from filterformer.runs.predict import PredictOptions, export_submission
from filterformer.submission import MAPS_DIR, MASKS_DIR
from filterformer.submission.rescale import MapRescale
from test_runtime import run_without_torch

pytestmark = pytest.mark.slow

SPLITS = ["test_private", "test_private_mixed", "test_public"]


@pytest.fixture(scope="module")
def tiny_cpr_demo_run(tmp_path_factory) -> Path:
    """preset=cpr_demo (a texture: no foreground), cut by TINY_CPR."""
    root = tmp_path_factory.mktemp("cpr_demo")
    ff_train(*TINY_CPR, f"data.root={root / 'data'}", f"run_dir={root / 'cpr_demo'}")
    return root / "cpr_demo"


@pytest.fixture(scope="module", params=["cpr", "cpr_demo", "ear", "fader"])
def exported(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """(family, run folder, its export folder): ``cpr`` is the suite's vial (an object with
    its foreground), exported by ff-export --runs; ``cpr_demo`` (a texture), EAR and FADeR
    are exported by ff-export --run."""
    if request.param == "cpr":
        suite = request.getfixturevalue("suite")
        return "cpr", suite.runs / "vial", suite.deploy / "vial"
    run_dir = request.getfixturevalue(f"tiny_{request.param}_run")
    out = tmp_path_factory.mktemp(f"{request.param}_export") / "model.onnx"
    assert export_cli(["--run", str(run_dir), "--out", str(out), "--no-progress"]) == 0
    return request.param, run_dir, out.parent


def read_maps(folder: Path) -> dict[Path, np.ndarray]:
    return {p.relative_to(folder): tifffile.imread(p) for p in sorted(folder.rglob("*.tiff"))}


def float16_close(a: np.ndarray, b: np.ndarray, rescale: MapRescale) -> bool:
    """Two exported float16 maps equal up to the parity tolerance plus two float16 steps
    (each is rounded to float16 on its own, and nudged at most one step at the threshold)."""
    x, y = a.astype(np.float32), b.astype(np.float32)
    peak = max(1.0, float(np.abs(rescale.invert(x)).max()))
    steps = 2 * np.spacing(np.maximum(np.abs(x), np.abs(y)).astype(np.float16)).astype(np.float32)
    return bool((np.abs(x - y) <= FP32_TOLERANCE * peak * rescale.scale + steps).all())


def assert_same_benchmark_files(folder: Path, other: Path, rescale: MapRescale) -> None:
    maps, others = read_maps(folder / MAPS_DIR), read_maps(other / MAPS_DIR)
    assert maps.keys() == others.keys() and maps
    for name, amap in maps.items():
        assert float16_close(amap, others[name], rescale), name
        png = (Path(MASKS_DIR) / name).with_suffix(".png")
        masks = [np.asarray(Image.open(root / png)) for root in (folder, other)]
        assert np.mean(masks[0] == masks[1]) >= 0.999


def test_each_family_exports_with_parity_and_runs_as_torch_does(exported, tmp_path):
    name, run_dir, folder = exported
    manifest = json.loads((folder / "export.json").read_text())
    entry = manifest["files"]["model.onnx"]
    assert entry["parity"]["ok"] and entry["parity"]["max_map_diff"] <= FP32_TOLERANCE
    if name == "cpr":  # query graph, retrieval over the float16 bank, local graph
        assert [s.get("graph", s.get("op")) for s in entry["stages"]] == [
            "query",
            "retrieve",
            "gather",  # fine descriptors
            "gather",  # coarse descriptors
            "gather",  # foreground maps
            "local",
        ]
        assert entry["parity"]["mismatched"] == {"neighbours": 0}
        bank = load_file(str(folder / entry["arrays"]))
        assert bank["fine"].dtype == bank["coarse"].dtype == np.float16
        train = COUNTS["train"]  # the suite's vial: one reference per training image
        assert bank["histograms"].shape[0] == bank["fine"].shape[0] == train
        assert bank["foreground"].shape[0] == train
    if name == "cpr_demo":  # a texture: no foreground map to gather
        stages = [s.get("graph", s.get("op")) for s in entry["stages"]]
        assert stages == ["query", "retrieve", "gather", "gather", "local"]
        assert entry["parity"]["mismatched"] == {"neighbours": 0}
        assert "foreground" not in load_file(str(folder / entry["arrays"]))
    rescale = MapRescale.from_dict(manifest["rescale"])
    base = ["--run", str(run_dir), "--split", *SPLITS, "--no-progress"]
    assert predict_cli([*base, "--out", str(tmp_path / "torch")]) == 0
    backend = ["--backend", "onnxruntime", "--model", str(folder / "model.onnx")]
    assert predict_cli([*base, "--out", str(tmp_path / "ort"), *backend]) == 0
    assert_same_benchmark_files(tmp_path / "torch", tmp_path / "ort", rescale)
    # the export folder alone, in a process that cannot import torch, writes the same files
    shutil.copytree(folder, tmp_path / "line_pc")
    argv = [
        "--export",
        str(tmp_path / "line_pc"),
        "--out",
        str(tmp_path / "alone"),
        "--split",
        *SPLITS,
        "--no-progress",
    ]
    done = run_without_torch(
        f"from filterformer.cli.predict import main\nassert main({argv!r}) == 0\n"
        "assert 'torch' not in sys.modules\n"
    )
    assert done.returncode == 0, done.stderr
    ort, alone = read_maps(tmp_path / "ort" / MAPS_DIR), read_maps(tmp_path / "alone" / MAPS_DIR)
    assert ort.keys() == alone.keys() and all(np.array_equal(ort[k], alone[k]) for k in ort)


def test_each_family_exports_to_openvino_with_parity(exported, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    name, run_dir, folder = exported

    def copy_onnx(graph, example, path, *, dynamic_size=False):  # the ONNX export's trace
        shutil.copy(folder / path.name.replace(".fp32.onnx", ".onnx"), path)

    monkeypatch.setattr("filterformer.export.exporter.export_graph", copy_onnx)
    out = tmp_path / "model.xml"
    args = ["--run", str(run_dir), "--format", "openvino", "--out", str(out), "--no-progress"]
    assert export_cli(args) == 0
    entry = json.loads((tmp_path / "export.json").read_text())["files"]["model.xml"]
    assert entry["runtime"] == "openvino" and entry["parity"]["ok"]
    assert entry["parity"]["max_map_diff"] <= FP32_TOLERANCE
    assert all(
        (tmp_path / s["file"]).with_suffix(".bin").is_file()
        for s in entry["stages"]
        if "graph" in s
    )


COUNTS = {
    "train": 6,
    "validation": 3,
    "test_public_good": 1,
    "test_public_bad": 2,
    "test_private": 2,
    "test_private_mixed": 2,
}
TINY_SUITE_GRAPHS = [
    *TINY_SUITE,
    "inpformer:model.decoder_depth=2",  # two decoder blocks: a graph half as long to export
    "inpformer:model.groups=[[0],[1]]",
]


@dataclass(frozen=True)
class Deployed:
    """A trained suite and its deployment: the suite folder and ff-export --runs' folder."""

    runs: Path
    deploy: Path


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Deployed:
    """can (INP-Former, grid tiles) and vial (CPR, foreground), trained as a suite and deployed
    as one folder by ff-export --runs."""
    root = tmp_path_factory.mktemp("suite")
    data = root / "data"
    for category in ("can", "vial"):
        make_synthetic_category(data, category=category, image_size=(64, 96), counts=COUNTS)
    ff_train(
        "suite=inpformer_cpr_hybrid",
        f"suite.dir={root / 'suite'}",
        "suite.categories=[can,vial]",
        f"data.root={data}",
        *TINY_SUITE_GRAPHS,
    )
    deploy = root / "deploy"
    assert export_cli(["--runs", str(root / "suite"), "--out", str(deploy), "--no-progress"]) == 0
    return Deployed(root / "suite", deploy)


def test_a_suite_of_two_families_deploys_as_one_folder_and_submits_without_torch(suite, tmp_path):
    """ff-export --runs wrote one folder; without torch, it writes a checked, packed
    submission equal to the torch one."""
    assert json.loads((suite.deploy / "suite.json").read_text())["categories"] == {
        "can": "can",
        "vial": "vial",
    }
    counts = {"can": 2, "vial": 2}
    code = (
        "from pathlib import Path\nfrom filterformer.runtime import Suite\n"
        f"archive = Suite({str(suite.deploy)!r}).write_submission("
        f"Path({str(tmp_path / 'team')!r}), counts={counts!r}, progress=False)\n"
        "assert archive.is_file() and 'torch' not in sys.modules\n"
    )
    done = run_without_torch(code)
    assert done.returncode == 0, done.stderr
    options = PredictOptions(no_progress=True)
    assert export_submission(suite.runs, tmp_path / "torch", options, counts=counts) is not None
    for category in counts:
        manifest = json.loads((suite.deploy / category / "export.json").read_text())
        rescale = MapRescale.from_dict(manifest["rescale"])
        torch_maps = read_maps(tmp_path / "torch" / MAPS_DIR / category)
        team_maps = read_maps(tmp_path / "team" / MAPS_DIR / category)
        assert torch_maps.keys() == team_maps.keys() and len(torch_maps) == 4
        assert all(float16_close(m, team_maps[k], rescale) for k, m in torch_maps.items())
