"""predict_maps (original-size maps, batching, smoothing, tiling) and the ff-predict CLI."""

import json
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from filterformer.cli.eval import main as eval_cli
from filterformer.cli.predict import main as predict_cli
from filterformer.data.mvtec_ad2 import MVTecAD2
from filterformer.data.sample import Sample
from filterformer.data.tiling import GridTiling, Tiling
from filterformer.data.transforms import InputGeometry
from filterformer.errors import ConfigError
from filterformer.evaluation.thresholds import read_thresholds
from filterformer.inference.original_maps import quantize
from filterformer.inference.predict import (
    Smoothing,
    gaussian_blur,
    network_maps,
    predict_maps,
    predict_mode_maps,
    smooth_maps,
)
from filterformer.io import write_json, write_png
from filterformer.models.registry import build_encoder, build_model
from filterformer.runs.calibrate import calibrate_run
from filterformer.runs.files import sign_run
from filterformer.runs.predict import PredictOptions, export_submission
from filterformer.runs.run import build_from_config, create_run
from filterformer.submission import MAPS_DIR, MASKS_DIR, PRIVATE_SPLITS, MapRescale
from filterformer.training.checkpoint import save_checkpoint

GEOMETRY = InputGeometry(resize=(112, 140))  # the tiny encoder's 8 x 10 token grid
STATS = {"inp": (0.1, 0.05), "filter": (0.2, 0.1)}
SYNTHETIC_CATEGORY = "synthetic"  # the category of conftest's synthetic_root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("filterformer", build_encoder("tiny_random")).eval()


def _samples(folder: Path, shapes) -> list[Sample]:
    rng = np.random.default_rng(0)
    samples = []
    for index, (height, width) in enumerate(shapes):
        path = folder / f"{index:03d}_regular.png"
        write_png(path, rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        relpath = PurePosixPath(f"test_private/{path.stem}")
        samples.append(
            Sample(path, "synthetic", "test_private", relpath, None, "regular", None, height, width)
        )
    return samples


def test_maps_come_back_at_each_original_size_in_order(model, tmp_path):
    samples = _samples(tmp_path, [(60, 80), (90, 70), (33, 150)])
    out = list(predict_maps(model, samples, GEOMETRY, mode="mean", map_stats=STATS, batch_size=2))
    assert [s for s, _ in out] == samples
    for sample, amap in out:
        assert amap.dtype == np.float32 and amap.shape == sample.shape
        assert np.isfinite(amap).all()


def test_all_modes_come_from_one_forward_pass_and_equal_each_mode_alone(
    model, tmp_path, monkeypatch
):
    samples = _samples(tmp_path, [(60, 80), (90, 70), (33, 150)])
    forward = model.anomaly_maps
    calls = []
    monkeypatch.setattr(model, "anomaly_maps", lambda x: calls.append(len(x)) or forward(x))
    modes = ("inp", "filter", "mean", "max", "product")
    together = list(
        predict_mode_maps(model, samples, GEOMETRY, modes=modes, map_stats=STATS, batch_size=2)
    )
    assert calls == [2, 1]  # one pass per batch, whatever the number of modes
    for mode in modes:
        alone = predict_maps(model, samples, GEOMETRY, mode=mode, map_stats=STATS, batch_size=2)
        for (sample, maps), (same, amap) in zip(together, alone, strict=True):
            assert sample == same and np.array_equal(maps[mode], amap), mode


def test_batch_size_does_not_change_the_maps(model, tmp_path):
    samples = _samples(tmp_path, [(60, 80), (90, 70), (33, 150)])
    one = [m for _, m in predict_maps(model, samples, GEOMETRY, mode="inp", batch_size=1)]
    three = [m for _, m in predict_maps(model, samples, GEOMETRY, mode="inp", batch_size=3)]
    for a, b in zip(one, three, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_tile_covering_the_whole_image_gives_the_untiled_map(model, tmp_path):
    samples = _samples(tmp_path, [(60, 80), (50, 50)])
    tiling = Tiling((128, 128), overlap=0.25)
    kwargs = {"mode": "product", "map_stats": STATS, "batch_size": 1}
    plain = [m for _, m in predict_maps(model, samples, GEOMETRY, **kwargs)]
    tiled = [m for _, m in predict_maps(model, samples, GEOMETRY, tiling=tiling, **kwargs)]
    for a, b in zip(plain, tiled, strict=True):
        np.testing.assert_array_equal(a, b)


def test_tiled_inference_blends_several_tiles_to_the_original_size(model, tmp_path):
    [sample] = _samples(tmp_path, [(70, 200)])
    tiling = Tiling((70, 80), overlap=0.25)
    assert len(tiling.tiles(*sample.shape)) == 3
    [(_, amap)] = predict_maps(model, [sample], GEOMETRY, mode="filter", tiling=tiling)
    assert amap.shape == (70, 200) and np.isfinite(amap).all()


def test_grid_inference_pastes_each_cell_scored_alone(model, tmp_path):
    """ISVL hybrid grids: the map of each cell is the untiled map of that cell's crop."""
    [sample] = _samples(tmp_path, [(60, 160)])
    grid = GridTiling([2, 1])
    [(_, amap)] = predict_maps(model, [sample], GEOMETRY, mode="filter", tiling=grid, batch_size=1)
    image = sample.load_image()
    for y0, x0, y1, x1 in grid.tiles(60, 160):
        [cell] = _samples(tmp_path / f"cell{x0}", [(y1 - y0, x1 - x0)])
        write_png(cell.path, image[y0:y1, x0:x1])
        [(_, alone)] = predict_maps(model, [cell], GEOMETRY, mode="filter", batch_size=1)
        np.testing.assert_allclose(amap[y0:y1, x0:x1], alone, rtol=1e-5, atol=1e-6)


def test_network_maps_fuse_then_smooth(model):
    images = torch.randn(2, 3, *GEOMETRY.input_size)
    raw = network_maps(model, images, "filter", smoothing=Smoothing(sigma=0))
    np.testing.assert_array_equal(raw, model.anomaly_maps(images)["filter"])
    smooth = network_maps(model, images, "filter")
    np.testing.assert_allclose(smooth, gaussian_blur(raw, 4.0))


def test_protocol_size_smooths_at_that_size_and_comes_back(model):
    # INP-Former parity: 392 map -> 256 (bilinear, align_corners=False) -> zero-padded blur
    images = torch.randn(2, 3, *GEOMETRY.input_size)
    raw = network_maps(model, images, "inp", smoothing=Smoothing(sigma=0))
    protocol = Smoothing(padding="zero", size=(40, 50))
    small = F.interpolate(raw[:, None], (40, 50), mode="bilinear", align_corners=False)[:, 0]
    expected_small = gaussian_blur(small, 4.0, 5, "zero")
    torch.testing.assert_close(smooth_maps(raw, protocol), expected_small)
    back = network_maps(model, images, "inp", smoothing=protocol)
    assert back.shape == (2, *GEOMETRY.input_size)
    expected = F.interpolate(expected_small[:, None], GEOMETRY.input_size, mode="bilinear")
    torch.testing.assert_close(back, expected[:, 0])


def test_zero_padding_is_a_zero_padded_2d_gaussian_convolution():
    # the official get_gaussian_kernel: a normalised 5 x 5 Gaussian, Conv2d(padding=2)
    maps = torch.rand(2, 12, 15, generator=torch.Generator().manual_seed(0))
    offsets = torch.arange(5.0) - 2
    kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None] ** 2) / (2 * 4.0**2))
    expected = F.conv2d(maps[:, None], (kernel / kernel.sum())[None, None], padding=2)[:, 0]
    torch.testing.assert_close(gaussian_blur(maps, 4.0, 5, "zero"), expected)
    constant = torch.ones(1, 12, 15)
    zero_padded = gaussian_blur(constant, 4.0, 5, "zero")
    assert zero_padded[0, 0, 0] < 0.5 and zero_padded[0, 6, 7] == pytest.approx(1.0)


def _isvl_tile_map(model, tile: np.ndarray) -> np.ndarray:
    """The ISVL hybrid code's map of one tile, written out: the token-grid cosine map resized
    straight to the tile's size (bilinear, align_corners=True), a zero-padded 5 x 5 Gaussian
    of sigma 4 (get_gaussian_kernel), clipped to [0, 1] and stored as uint8 (x 255, floor)."""
    with torch.no_grad():
        tokens = model.anomaly_maps(GEOMETRY.to_tensor(tile)[None], size=(8, 10))["inp"]
    resized = F.interpolate(tokens[:, None], tile.shape[:2], mode="bilinear", align_corners=True)
    offsets = torch.arange(5.0) - 2
    kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None] ** 2) / (2 * 4.0**2))
    blurred = F.conv2d(resized, (kernel / kernel.sum())[None, None], padding=2)[0, 0].numpy()
    return (np.clip(blurred, 0, 1) * 255).astype(np.uint8).astype(np.float32)


def test_isvl_maps_are_made_at_the_tile_size_blurred_there_and_8_bit(model, tmp_path):
    """Smoothing(at_original, zero padding, levels 255): the ISVL hybrid code's INP-Former maps,
    tile by tile, pasted back (its grids do not overlap)."""
    [sample] = _samples(tmp_path, [(61, 163)])
    grid = GridTiling([2, 1])
    isvl = Smoothing(padding="zero", at_original=True, levels=255)
    [(_, amap)] = predict_maps(
        model, [sample], GEOMETRY, mode="inp", smoothing=isvl, tiling=grid, batch_size=2
    )
    image = sample.load_image()
    assert amap.dtype == np.float32 and amap.shape == (61, 163)
    for y0, x0, y1, x1 in grid.tiles(61, 163):  # 81 and 82 px wide: one size at a time
        expected = _isvl_tile_map(model, image[y0:y1, x0:x1])
        assert (amap[y0:y1, x0:x1] != expected).mean() < 0.01  # float rounding at a level edge
        assert np.abs(amap[y0:y1, x0:x1] - expected).max() <= 1
    ours = next(predict_maps(model, [sample], GEOMETRY, mode="inp", tiling=grid))[1]
    assert np.abs(np.floor(np.clip(ours, 0, 1) * 255) - amap).max() >= 1  # the order matters


@pytest.mark.parametrize("level", [0, 79, 96, 254])
def test_8_bit_levels_compare_as_the_isvl_code_s_thresholds(level):
    """floor(255 m) > t (cv2.threshold of the code's uint8 maps) is exactly quantize(m) > t."""
    maps = np.random.default_rng(level).uniform(-0.2, 1.2, (64, 64)).astype(np.float32)
    maps[0, :4] = [
        level / 255,
        (level + 1) / 255,
        np.nextafter(np.float32((level + 1) / 255), 0),
        1,
    ]
    code = (np.clip(maps, 0, 1) * 255).astype(np.uint8) > level
    np.testing.assert_array_equal(quantize(maps, 255) > level, code)
    assert set(np.unique(quantize(maps, 255))) <= set(range(256))
    assert quantize(maps, None) is maps


def test_blur_at_original_is_refused_where_the_map_cannot_cover_the_image(model, tmp_path):
    samples = _samples(tmp_path, [(40, 50)])
    cropped = InputGeometry(resize=(112, 140), crop=(112, 112))
    with pytest.raises(ConfigError, match="input.crop=null"):
        list(
            predict_maps(model, samples, cropped, mode="inp", smoothing=Smoothing(at_original=True))
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"padding": "mirror"}, "eval.blur_padding 'mirror' is unknown"),
        ({"kernel_size": 4}, "eval.blur_kernel 4 must be a positive odd int"),
        ({"size": (256,)}, "eval.protocol_size"),
        ({"size": (256, 256), "at_original": True}, "eval.blur_at=original"),
        ({"levels": 0}, "eval.levels 0"),
    ],
)
def test_bad_smoothing_settings_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Smoothing(**kwargs)


def test_gaussian_blur_keeps_constants_and_mass_and_smooths_a_spike():
    constant = torch.full((1, 9, 11), 0.25)
    torch.testing.assert_close(gaussian_blur(constant, 4.0), constant)
    spike = torch.zeros(1, 9, 11)
    spike[0, 4, 5] = 1.0
    out = gaussian_blur(spike, 4.0)
    assert out.shape == spike.shape
    assert out.sum().item() == pytest.approx(1.0)  # interior spike: kernel sums to 1
    assert out[0, 4, 5] < 1.0 and out[0, 2, 3] > 0 and out[0, 0, 0] == 0  # 5 x 5 support
    assert torch.equal(gaussian_blur(spike, 0.0), spike)


# ------------------------------------------------------------------------- ff-predict CLI


@pytest.fixture(scope="module")
def run_dir(synthetic_root, tmp_path_factory) -> Path:
    """A run folder of a randomly initialised tiny Filter-Former on the synthetic category."""
    config = OmegaConf.create(
        {
            "seed": 0,
            "category": {
                "name": SYNTHETIC_CATEGORY,
                "tiling": {"enabled": False},
                "postprocess": {"closing": 0, "fill_holes": False, "erosion": 0},
            },
            "data": {"kind": "mvtec_ad2", "root": str(synthetic_root)},
            "input": {"resize": list(GEOMETRY.resize_hw), "crop": None},
            "encoder": {"variant": "tiny_random"},
            "model": {"name": "filterformer"},
            "eval": {"default_mode": None},
        }
    )
    folder = create_run(tmp_path_factory.mktemp("runs") / "synthetic", config, "random:seed=0")
    model, identity = build_from_config(config)
    save_checkpoint(folder / "checkpoints" / "last", model, meta={"step": 0, **identity})
    write_json(folder / "fusion.json", {SYNTHETIC_CATEGORY: "mean"})
    write_json(folder / "map_stats.json", {k: {"mean": m, "std": s} for k, (m, s) in STATS.items()})
    sign_run(folder)  # as its writer does
    calibrate_run(folder, device="cpu")  # what training does when it ends
    return folder


def _ff_predict(*args) -> int:
    return predict_cli([*map(str, args), "--no-progress"])


@pytest.mark.slow
def test_run_exports_both_private_splits_and_resumes(run_dir, synthetic_root, tmp_path):
    out = tmp_path / "maps"
    assert _ff_predict("--run", run_dir, "--out", out) == 0
    # the export's record stays inside --out; the rescale maps the calibrated validation
    # range of the run's mode ("mean") to 0 - 1000
    record = json.loads((out / "rescale.json").read_text())[SYNTHETIC_CATEGORY]
    threshold = read_thresholds(run_dir / "thresholds.json", "mean")[SYNTHETIC_CATEGORY]
    assert record["threshold"] == threshold.value
    assert MapRescale.from_dict(record) == MapRescale.from_range(*threshold.map_range)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps"]
    samples = [
        s for split in PRIVATE_SPLITS for s in MVTecAD2(synthetic_root, SYNTHETIC_CATEGORY, split)
    ]
    tiffs = sorted((out / MAPS_DIR / SYNTHETIC_CATEGORY).rglob("*.tiff"))
    assert [p.relative_to(out / MAPS_DIR / SYNTHETIC_CATEGORY).as_posix() for p in tiffs] == [
        f"{s.relpath}.tiff" for s in samples
    ]
    for tiff, sample in zip(tiffs, samples, strict=True):
        half = tifffile.imread(tiff)
        assert half.dtype == np.float16 and half.shape == sample.shape
        png = out / MASKS_DIR / tiff.relative_to(out / MAPS_DIR).with_suffix(".png")
        mask = np.asarray(Image.open(png)) == 255
        np.testing.assert_array_equal(half > record["threshold_rescaled"], mask)
    mtimes = [p.stat().st_mtime_ns for p in tiffs]
    assert _ff_predict("--run", run_dir, "--out", out) == 0
    assert [p.stat().st_mtime_ns for p in tiffs] == mtimes


@pytest.mark.slow
def test_test_public_layout_is_read_by_ff_eval(run_dir, synthetic_root, tmp_path):
    out = tmp_path / "public"
    assert _ff_predict("--run", run_dir, "--out", out, "--split", "test_public") == 0
    category = out / MAPS_DIR / SYNTHETIC_CATEGORY / "test_public"
    expected = sorted(
        f"{s.relpath}.tiff" for s in MVTecAD2(synthetic_root, "synthetic", "test_public")
    )
    found = sorted(p.relative_to(category.parent).as_posix() for p in category.rglob("*.tiff"))
    assert found == expected
    assert {p.parent.name for p in category.rglob("*.tiff")} == {"good", "bad"}
    result = tmp_path / "metrics.json"
    code = eval_cli(
        [
            "--maps",
            str(out),
            "--data-root",
            str(synthetic_root),
            "--json",
            str(result),
            "--no-progress",
        ]
    )
    assert code == 0
    row = json.loads(result.read_text())["categories"][SYNTHETIC_CATEGORY]
    assert 0.0 <= row["au_pro@0.05"] <= 1.0 and row["threshold_rule"] != "none"


@pytest.mark.slow
def test_custom_images_get_maps_masks_and_overlays(run_dir, tiny_image_dir, tmp_path):
    out = tmp_path / "custom"
    assert _ff_predict("--run", run_dir, "--images", tiny_image_dir, "--out", out) == 0
    for stem in ("a", "b", "c", "d"):
        assert tifffile.imread(out / MAPS_DIR / SYNTHETIC_CATEGORY / f"{stem}.tiff").shape == (
            32,
            40,
        )
        assert (out / MASKS_DIR / SYNTHETIC_CATEGORY / f"{stem}.png").is_file()
        panel = np.asarray(Image.open(out / "overlays" / SYNTHETIC_CATEGORY / f"{stem}.png"))
        assert panel.shape[0] >= 400 and panel.shape[1] > 3 * panel.shape[0]  # 3 panels + bar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom"]


def test_submission_is_exported_checked_and_packed(run_dir, tmp_path):
    options = PredictOptions(no_progress=True)
    out = tmp_path / "team"
    counts = {SYNTHETIC_CATEGORY: 4}  # conftest's synthetic_root has 4 images per private split
    archive = export_submission(run_dir.parent, out, options, counts=counts)
    assert archive == tmp_path / "team.tar.gz"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert len(names) == 2 * 2 * 4
    assert "team/anomaly_images/synthetic/test_private_mixed/003_mixed.tiff" in names


def test_submission_needs_a_run_for_every_category(run_dir, tmp_path, capsys):
    code = _ff_predict("--runs", run_dir.parent, "--submission", "x", "--out", tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and "no run folder for can, fabric" in err and "Traceback" not in err


def test_check_reports_problems_and_exits_2(tmp_path, capsys):
    (tmp_path / "sub" / MAPS_DIR).mkdir(parents=True)
    (tmp_path / "sub" / ".DS_Store").write_bytes(b"")
    assert _ff_predict("--check", tmp_path / "sub") == 2
    out = capsys.readouterr().out
    assert ".DS_Store: hidden entry" in out and "missing category folder" in out


def test_a_folder_that_is_not_a_run_exits_2(tmp_path, capsys):
    assert _ff_predict("--run", tmp_path, "--out", tmp_path / "o") == 2
    assert "not a run folder" in capsys.readouterr().err
