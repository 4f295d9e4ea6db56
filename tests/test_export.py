"""ff-export and ff-predict --backend: the demo run in ONNX Runtime / OpenVINO against torch.

One tiny demo run is trained and exported once (conftest's session fixtures); the tests that
need another file of the same run state stub the trace with a copy of that export, so that only
the export they are about is traced.
"""

import csv
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import tifffile
import torch
from omegaconf import OmegaConf
from PIL import Image

from filterformer.cli.export import main as export_cli
from filterformer.cli.predict import main as predict_cli
from filterformer.errors import ConfigError, DeployError
from filterformer.evaluation.image_metrics import top_fraction_mean
from filterformer.export import FP16_TOLERANCE, FP32_TOLERANCE, MapFinish
from filterformer.export.formats import weights_to_float16
from filterformer.export.graph import check_exportable, image_scores
from filterformer.export.parity import check_parity
from filterformer.inference.predict import Smoothing, network_maps
from filterformer.io import read_image
from filterformer.models.export_plan import single_graph
from filterformer.models.registry import build_encoder, build_model, family
from filterformer.runs.files import sign_run
from filterformer.runs.predict import PredictOptions, export_submission
from filterformer.runs.run import load_run, split_samples
from filterformer.runtime import open_session
from filterformer.runtime.pipeline import PipelineBackend
from filterformer.runtime.sessions import require
from filterformer.submission import MAPS_DIR, MASKS_DIR, check_submission
from filterformer.submission.rescale import MapRescale

CATEGORY = "synthetic"  # the demo preset's category
INPUT_SIZE = (56, 70)  # conftest's tiny_demo_overrides: input.resize


@pytest.fixture(scope="module")
def demo_run(tiny_demo_run) -> Path:
    """The tiny demo run (one epoch on a few 56 x 70 images), alone in its runs folder."""
    return tiny_demo_run


@pytest.fixture(scope="module")
def exported(tiny_demo_export) -> tuple[Path, str]:
    """ff-export of the demo run to its default place: (the .onnx file, what it printed)."""
    return tiny_demo_export


def _inputs(run, split: str) -> torch.Tensor:
    return torch.stack(
        [run.geometry.to_tensor(s.load_image()) for s in split_samples(run.config, split)]
    )


def _within(got: np.ndarray, expected: np.ndarray, tolerance: float) -> bool:
    """The parity rule: max |difference| <= tolerance * max(1, peak |expected|)."""
    return np.abs(got - expected).max() <= tolerance * max(1.0, float(np.abs(expected).max()))


def _run_file(path: Path, backend: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(maps, scores) of a one-graph export file in a runtime."""
    maps, scores = open_session(path, backend)({"images": images}, ["maps", "scores"])
    return maps, scores


def _stub_trace(monkeypatch, source: Path) -> None:
    """Make ff-export's trace write a copy of ``source`` (an export of the same run state)."""

    def copy(graph, example, path, *, dynamic_size=False):
        shutil.copy(source, path)

    monkeypatch.setattr("filterformer.export.exporter.export_graph", copy)


def _ff_predict(*args) -> int:
    return predict_cli([*map(str, args), "--no-progress"])


# ------------------------------------------------------------------------------ ff-export


@pytest.mark.slow
def test_the_demo_run_runs_in_onnxruntime_within_1e_4_of_torch(demo_run, exported):
    path, printed = exported
    assert "passed" in printed and f"wrote {path}" in printed
    run = load_run(demo_run)
    inputs = _inputs(run, "test_public")  # not the images the export was checked on
    expected = network_maps(run.model, inputs, run.mode, run.map_stats, run.smoothing).numpy()
    assert expected.std() > 0  # a real map, not a constant
    maps, scores = _run_file(path, "onnxruntime", inputs.numpy())
    assert maps.shape == expected.shape == (len(inputs), *INPUT_SIZE)
    assert _within(maps, expected, FP32_TOLERANCE)
    assert run.image_score == "max"
    assert _within(scores, expected.reshape(len(inputs), -1).max(axis=1), FP32_TOLERANCE)


@pytest.mark.slow
def test_export_json_lets_a_caller_without_filterformer_use_the_file(demo_run, exported):
    path, _ = exported
    record = json.loads((path.parent / "export.json").read_text())
    run = load_run(demo_run)
    rescale = MapRescale.from_range(*run.threshold.map_range).to_dict()
    assert (record["category"], record["mode"]) == (CATEGORY, run.mode)
    assert record["threshold"]["value"] == run.threshold.value
    assert (record["rescale"]["offset"], record["rescale"]["scale"]) == (
        rescale["offset"],
        rescale["scale"],
    )
    entry = record["files"]["model.onnx"]
    assert entry["input_size"] == list(INPUT_SIZE) and entry["parity"]["ok"] is True
    assert entry["parity"]["max_map_diff"] <= FP32_TOLERANCE
    # the preprocessing from export.json alone, with OpenCV and NumPy, gives torch's input
    pre = record["preprocessing"]
    assert (pre["fit"], pre["crop"], pre["interpolation"]) == ("squash", None, "area")
    sample = split_samples(run.config, "validation")[0]
    image = read_image(sample.path)
    resized = cv2.resize(image, pre["resize"][::-1], interpolation=cv2.INTER_AREA)
    normalised = (resized * pre["scale"] - pre["mean"]) / pre["std"]
    own = normalised.transpose(2, 0, 1)[None].astype(np.float32)
    np.testing.assert_allclose(own[0], run.geometry.to_tensor(image).numpy(), atol=1e-5)
    maps, _ = _run_file(path, "onnxruntime", own)
    expected = network_maps(
        run.model, torch.from_numpy(own), run.mode, run.map_stats, run.smoothing
    )
    assert _within(maps, expected.numpy(), FP32_TOLERANCE)


def _perturbed_copy(source: Path):
    """A trace stub writing ``source`` with every weight tensor changed by about 1 %."""
    rng = np.random.default_rng(0)

    def perturb(graph, example, path, *, dynamic_size=False):
        model = onnx.load(str(source))
        for init in model.graph.initializer:
            weights = onnx.numpy_helper.to_array(init)
            if weights.dtype == np.float32 and weights.size >= 16:
                noisy = weights * (1 + 0.01 * rng.standard_normal(weights.shape))
                init.CopyFrom(onnx.numpy_helper.from_array(noisy.astype(np.float32), init.name))
        onnx.save(model, str(path))

    return perturb


@pytest.mark.slow
def test_export_refuses_a_perturbed_graph_and_keeps_the_earlier_file(
    demo_run, exported, tmp_path, monkeypatch, capsys
):
    good, _ = exported
    out = tmp_path / "model.onnx"
    shutil.copy(good, out)  # an earlier export at --out
    monkeypatch.setattr("filterformer.export.exporter.export_graph", _perturbed_copy(good))
    assert export_cli(["--run", str(demo_run), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "FAILED" in err and "nothing was written" in err and "Traceback" not in err
    assert out.read_bytes() == good.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no export.json, no leftovers


def _weight_bytes(path: Path) -> int:
    """Bytes of an ONNX file's weight tensors (the tiny model's graph itself is 1.6 MB)."""
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


@pytest.mark.slow
def test_fp16_halves_the_weights_within_the_fp16_tolerance(
    demo_run, exported, tmp_path, monkeypatch, capsys
):
    good, _ = exported
    out = tmp_path / "fp16.onnx"
    _stub_trace(monkeypatch, good)
    assert export_cli(["--run", str(demo_run), "--out", str(out), "--fp16", "--no-progress"]) == 0
    assert "passed" in capsys.readouterr().out
    assert _weight_bytes(out) < 0.55 * _weight_bytes(good)
    entry = json.loads((tmp_path / "export.json").read_text())["files"]["fp16.onnx"]
    assert entry["fp16"] is True and entry["parity"]["tolerance"] == FP16_TOLERANCE
    kinds = {init.data_type for init in onnx.load(str(out)).graph.initializer}
    assert onnx.TensorProto.FLOAT in kinds  # small constants (statistics, kernels) stay float32


@pytest.mark.slow
def test_weights_to_float16_keeps_the_graph_computing_in_float32(exported, tmp_path):
    good, _ = exported
    weights_to_float16(good, tmp_path / "half.onnx")
    inputs = np.random.default_rng(0).standard_normal((2, 3, *INPUT_SIZE)).astype(np.float32)
    full, _ = _run_file(good, "onnxruntime", inputs)
    half, _ = _run_file(tmp_path / "half.onnx", "onnxruntime", inputs)
    assert half.dtype == np.float32 and _within(half, full, FP16_TOLERANCE)


@pytest.mark.slow
def test_a_dynamic_size_export_scores_any_patch_multiple_with_top1(demo_run, tmp_path, capsys):
    run_dir = tmp_path / "top1"
    shutil.copytree(demo_run, run_dir, ignore=shutil.ignore_patterns("export", "data"))
    config = OmegaConf.load(run_dir / "config.yaml")
    config.eval.image_score = "top1"
    OmegaConf.save(config, run_dir / "config.yaml")
    sign_run(run_dir)  # a run trained with it
    args = ["--run", run_dir, "--dynamic-size", "--no-progress"]
    assert export_cli(list(map(str, args))) == 0
    assert "parity on 4 images" in capsys.readouterr().out  # 2 images, at two sizes each
    run = load_run(run_dir)
    assert run.image_score == "top1"
    path = run_dir.with_name(run_dir.name + "_export") / "model.onnx"
    for size in [(28, 42), (98, 56)]:
        inputs = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(0))
        expected = network_maps(run.model, inputs, run.mode, run.map_stats, run.smoothing).numpy()
        maps, scores = _run_file(path, "onnxruntime", inputs.numpy())
        assert maps.shape == (3, *size) and _within(maps, expected, FP32_TOLERANCE)
        top1 = np.array([top_fraction_mean(m) for m in expected])
        assert _within(scores, top1, FP32_TOLERANCE)


@pytest.mark.slow
def test_openvino_export_runs_in_openvino_within_1e_4(demo_run, exported, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    good, _ = exported
    out = tmp_path / "model.xml"
    _stub_trace(monkeypatch, good)
    args = ["--run", demo_run, "--format", "openvino", "--out", out, "--no-progress"]
    assert export_cli(list(map(str, args))) == 0
    assert out.is_file() and out.with_suffix(".bin").is_file()
    entry = json.loads((tmp_path / "export.json").read_text())["files"]["model.xml"]
    assert entry["runtime"] == "openvino" and entry["parity"]["ok"] is True
    run = load_run(demo_run)
    inputs = _inputs(run, "test_public")
    expected = network_maps(run.model, inputs, run.mode, run.map_stats, run.smoothing).numpy()
    maps, _ = _run_file(out, "openvino", inputs.numpy())
    assert _within(maps, expected, FP32_TOLERANCE)


# ----------------------------------------------------------------------- ff-predict --backend


def _float16_close(a: Path, b: Path, rescale: MapRescale) -> bool:
    """Two exported float16 maps equal up to the parity tolerance plus two float16 steps
    (each map is rounded to float16 on its own, and nudged at most one step at the threshold)."""
    x, y = (tifffile.imread(p).astype(np.float32) for p in (a, b))
    peak = max(1.0, float(np.abs(rescale.invert(x)).max()))
    steps = 2 * np.spacing(np.maximum(np.abs(x), np.abs(y)).astype(np.float16)).astype(np.float32)
    return bool((np.abs(x - y) <= FP32_TOLERANCE * peak * rescale.scale + steps).all())


@pytest.mark.slow
def test_ff_predict_onnxruntime_writes_the_torch_files_and_passes_the_check(
    demo_run, exported, tmp_path
):
    assert _ff_predict("--run", demo_run, "--out", tmp_path / "torch") == 0
    options = PredictOptions(backend="onnxruntime", no_progress=True)
    counts = {CATEGORY: 1}  # the tiny demo has one image per private split
    archive = export_submission(demo_run.parent, tmp_path / "ort", options, counts=counts)
    assert archive.is_file()  # packed only after the upload checks found no error
    assert not [
        p for p in check_submission(tmp_path / "ort", None, counts) if p.severity == "error"
    ]
    rescale = MapRescale.from_range(*load_run(demo_run).threshold.map_range)
    maps = sorted((tmp_path / "torch" / MAPS_DIR).rglob("*.tiff"))
    assert len(maps) == 2
    for tiff in maps:
        relative = tiff.relative_to(tmp_path / "torch")
        assert _float16_close(tiff, tmp_path / "ort" / relative, rescale), relative
        png = Path(MASKS_DIR, *relative.parts[1:]).with_suffix(".png")
        masks = [
            np.asarray(Image.open(root / png)) for root in (tmp_path / "torch", tmp_path / "ort")
        ]
        assert np.mean(masks[0] == masks[1]) >= 0.999


@pytest.mark.slow
def test_ff_predict_onnxruntime_scores_own_images_as_torch_does(
    demo_run, exported, tiny_image_dir, tmp_path
):
    rows = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        args = ["--run", demo_run, "--images", tiny_image_dir, "--out", out, "--backend", backend]
        assert _ff_predict(*args) == 0
        assert len(list((out / "overlays" / CATEGORY).glob("*.png"))) == 4
        with open(out / "scores.csv", newline="") as fh:
            rows[backend] = {row["image"]: row for row in csv.DictReader(fh)}
    assert rows["torch"].keys() == rows["onnxruntime"].keys() and len(rows["torch"]) == 4
    scale = MapRescale.from_range(*load_run(demo_run).threshold.map_range).scale
    for name, row in rows["torch"].items():
        score = float(row["score"])
        other = float(rows["onnxruntime"][name]["score"])
        step = float(np.spacing(np.float16(1000.0))) / scale  # one float16 step near the top
        assert abs(score - other) <= FP32_TOLERANCE * max(1.0, abs(score)) + 2 * step


@pytest.mark.slow
def test_ff_predict_refuses_an_export_of_another_run_state(demo_run, exported, tmp_path, capsys):
    run_dir = tmp_path / "changed"
    shutil.copytree(demo_run, run_dir, ignore=shutil.ignore_patterns("data"))
    other_mode = "inp" if load_run(demo_run).mode != "inp" else "filter"
    (run_dir / "fusion.json").write_text(json.dumps({CATEGORY: other_mode}))
    sign_run(run_dir)  # a consistent run, in another mode than its export
    out = tmp_path / "out"
    args = ["--run", run_dir, "--out", out, "--backend", "onnxruntime", "--model", exported[0]]
    assert _ff_predict(*args) == 2
    assert "mode differ" in capsys.readouterr().err
    assert _ff_predict("--run", demo_run, "--out", out, "--model", exported[0]) == 2
    assert "--model is for --backend onnxruntime or openvino" in capsys.readouterr().err
    missing = tmp_path / "missing.onnx"
    args = ["--run", demo_run, "--out", out, "--backend", "onnxruntime", "--model", missing]
    assert _ff_predict(*args) == 2
    assert "exported model not found" in capsys.readouterr().err
    assert not (out / MAPS_DIR).exists()  # refused before any map was written


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--format", "openvino", "--out", "m.onnx"], "written as a .xml file; e.g. --out"),
        (["--format", "openvino", "--dynamic-size"], "export one OpenVINO file per input size"),
    ],
)
def test_ff_export_refuses_what_it_cannot_do_before_tracing(
    demo_run, capsys, tmp_path, monkeypatch, options, message
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("filterformer.export.exporter.export_graph", None)  # must not be reached
    assert export_cli(["--run", str(demo_run), *options]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- the parts


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model("filterformer", build_encoder("tiny_random")).eval()


def test_fixed_positions_give_the_encoder_its_own_tokens(tiny_model):
    encoder = tiny_model.encoder
    images = torch.randn(2, 3, *INPUT_SIZE)
    plain = encoder(images)
    with encoder.fixed_positions(encoder.grid_size(INPUT_SIZE)):
        fixed = encoder(images)
        with pytest.raises(ConfigError, match="differs from the fixed positions"):
            encoder(torch.randn(1, 3, 28, 28))
    assert all(torch.equal(a, b) for a, b in zip(plain, fixed, strict=True))


def test_image_scores_are_the_max_or_the_top_percent_mean():
    maps = torch.rand(2, 20, 30, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(image_scores(maps, "max"), maps.flatten(1).amax(1))
    top1 = [top_fraction_mean(m) for m in maps.numpy()]  # 6 of 600 pixels each
    np.testing.assert_allclose(image_scores(maps, "top1"), top1, rtol=1e-6)


class _Pipeline:
    """A stand-in pipeline returning fixed outputs."""

    def __init__(self, maps: np.ndarray, scores: np.ndarray) -> None:
        self.outputs = {"maps": maps, "scores": scores}

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self.outputs

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.outputs["maps"], self.outputs["scores"]


def test_parity_fails_on_nan_and_on_a_wrong_shape(tiny_model):
    finish = MapFinish("inp", None, Smoothing(), "max")
    plan = single_graph(tiny_model, finish)
    inputs = torch.randn(2, 3, *INPUT_SIZE)
    maps, scores = (t.numpy() for t in finish(tiny_model.anomaly_maps(inputs)))

    def parity(got_maps: np.ndarray) -> bool:
        return check_parity(
            tiny_model, finish, plan, _Pipeline(got_maps, scores), [inputs], 1e-4
        ).ok

    assert parity(maps)
    nan = maps.copy()
    nan[0, 0, 0] = np.nan
    assert not parity(nan)
    assert not parity(maps[:1])


def test_a_graph_that_fails_in_its_runtime_is_a_deploy_error(tiny_model):
    finish = MapFinish("inp", None, Smoothing(), "max")

    class Broken:
        def run(self, images):
            raise RuntimeError("Attempting to broadcast an axis\nmore detail")

    plan = single_graph(tiny_model, finish)
    with pytest.raises(DeployError, match="fails in its runtime .*broadcast an axis; nothing"):
        check_parity(tiny_model, finish, plan, Broken(), [torch.randn(1, 3, *INPUT_SIZE)], 1e-4)


def test_an_exported_backend_gives_its_mode_only():
    backend = PipelineBackend(_Pipeline(np.zeros((1, 4, 5)), np.zeros(1)), "mean")
    assert backend.maps(np.zeros((1, 3, 4, 5)), ["mean"])["mean"].shape == (1, 4, 5)
    with pytest.raises(ConfigError, match="gives fusion mode 'mean' only"):
        backend.maps(np.zeros((1, 3, 4, 5)), ["mean", "inp"])


def test_families_that_do_not_export_are_refused(monkeypatch):
    monkeypatch.setattr(type(family("cpr")), "exportable", False)
    with pytest.raises(DeployError, match="model 'cpr' has no exportable map path"):
        check_exportable("cpr")


def test_a_missing_runtime_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import then fails
    with pytest.raises(DeployError, match=r"pip install 'filterformer\[openvino\]'"):
        require("openvino")
