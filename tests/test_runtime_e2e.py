"""End to end: CPR, EAR and FADeR runs export with their parity checked, and the torch-free
runtime writes the files the torch model writes; a suite of two families deploys as one folder
and writes a checked submission in a process where torch cannot be imported.

Tiny runs (preset=cpr_demo; the demo preset on a few 56 x 70 images for EAR and FADeR): these
check the export and the runtime, not how well the models detect.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from safetensors.numpy import load_file

from filterformer.cli.export import main as export_cli
from filterformer.cli.predict import main as predict_cli
from filterformer.cli.train import main as train_cli
from filterformer.data.synthetic import make_synthetic_category
from filterformer.export.parity import FP32_TOLERANCE
from filterformer.runs.predict import PredictOptions, export_submission
from filterformer.submission import MAPS_DIR, MASKS_DIR
from filterformer.submission.rescale import MapRescale
from test_runtime import run_without_torch

pytestmark = pytest.mark.slow

TINY_UNET = ["model.widths=[4,8,8,16,16]"]
SPLITS = ["test_private", "test_private_mixed", "test_public"]


def ff_train(*args: str) -> None:
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["ff-train", *args])
        train_cli()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cpr_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cpr")
    ff_train("preset=cpr_demo", "progress=false", f"run_dir={root / 'cpr'}", f"data.root={root}")
    return root / "cpr"


@pytest.fixture(scope="module")
def ear_run(tmp_path_factory, tiny_demo_overrides) -> Path:
    root = tmp_path_factory.mktemp("ear")
    ff_train(
        "model=ear",
        *tiny_demo_overrides,
        *TINY_UNET,
        f"data.root={root / 'data'}",
        f"run_dir={root / 'ear'}",
    )
    return root / "ear"


@pytest.fixture(scope="module")
def fader_run(ear_run, tiny_demo_overrides) -> Path:
    run_dir = ear_run.with_name("fader")
    ff_train(
        "model=fader",
        *tiny_demo_overrides,
        *TINY_UNET,
        f"data.root={ear_run.parent / 'data'}",
        f"model.ear_run={ear_run}",
        f"run_dir={run_dir}",
    )
    return run_dir


@pytest.fixture(scope="module", params=["cpr", "ear", "fader"])
def exported(request) -> tuple[str, Path, Path]:
    """(family, run folder, its export folder): ff-export of the run to ONNX."""
    run_dir = request.getfixturevalue(f"{request.param}_run")
    assert export_cli(["--run", str(run_dir), "--no-progress"]) == 0
    return request.param, run_dir, run_dir.with_name(run_dir.name + "_export")


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
            "gather",
            "gather",
            "local",
        ]
        assert entry["parity"]["mismatched"] == {"neighbours": 0}
        bank = load_file(str(folder / entry["arrays"]))
        assert bank["fine"].dtype == bank["coarse"].dtype == np.float16
        assert bank["histograms"].shape[0] == bank["fine"].shape[0] == 24  # cpr_demo's train
    rescale = MapRescale.from_dict(manifest["rescale"])
    base = ["--run", str(run_dir), "--split", *SPLITS, "--no-progress"]
    assert predict_cli([*base, "--out", str(tmp_path / "torch")]) == 0
    assert predict_cli([*base, "--out", str(tmp_path / "ort"), "--backend", "onnxruntime"]) == 0
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
TINY_SUITE = [
    "progress=false",
    "train.epochs=1",
    "eval.every=1",
    "train.num_workers=0",
    "train.threads=1",
    "inpformer:encoder=tiny_random",
    "inpformer:input.resize=[56,56]",
    "inpformer:train.batch_size=4",
    "cpr:encoder=tiny_densenet",
    "cpr:input.resize=[64,64]",
    "cpr:category.cpr.steps=4",
    "cpr:category.cpr.batch_size=4",
    "cpr:model.out_dim=32",
    "cpr:model.inner_dim=16",
    "cpr:model.inception_dim=16",
    "cpr:model.codebook_samples=500",
    "cpr:model.points=50",
    "cpr:model.top_k=3",
]


def test_a_suite_of_two_families_deploys_as_one_folder_and_submits_without_torch(tmp_path):
    """can (INP-Former, grid tiles) and vial (CPR, foreground): ff-export --runs writes one
    folder; without torch, it writes a checked, packed submission equal to the torch one."""
    data = tmp_path / "data"
    for category in ("can", "vial"):
        make_synthetic_category(data, category=category, image_size=(64, 96), counts=COUNTS)
    suite = tmp_path / "suite"
    ff_train(
        "suite=inpformer_cpr_hybrid",
        f"suite.dir={suite}",
        "suite.categories=[can,vial]",
        f"data.root={data}",
        *TINY_SUITE,
    )
    deploy = tmp_path / "deploy"
    assert export_cli(["--runs", str(suite), "--out", str(deploy), "--no-progress"]) == 0
    assert json.loads((deploy / "suite.json").read_text())["categories"] == {
        "can": "can",
        "vial": "vial",
    }
    counts = {"can": 2, "vial": 2}
    code = (
        "from pathlib import Path\nfrom filterformer.runtime import Suite\n"
        f"archive = Suite({str(deploy)!r}).write_submission(Path({str(tmp_path / 'team')!r}), "
        f"counts={counts!r}, progress=False)\n"
        "assert archive.is_file() and 'torch' not in sys.modules\n"
    )
    done = run_without_torch(code)
    assert done.returncode == 0, done.stderr
    options = PredictOptions(no_progress=True)
    assert export_submission(suite, tmp_path / "torch", options, counts=counts) is not None
    for category in counts:
        manifest = json.loads((deploy / category / "export.json").read_text())
        rescale = MapRescale.from_dict(manifest["rescale"])
        torch_maps = read_maps(tmp_path / "torch" / MAPS_DIR / category)
        team_maps = read_maps(tmp_path / "team" / MAPS_DIR / category)
        assert torch_maps.keys() == team_maps.keys() and len(torch_maps) == 4
        assert all(float16_close(m, team_maps[k], rescale) for k, m in torch_maps.items())
