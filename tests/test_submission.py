"""Benchmark-server export: rescale, writer (atomic, resumable), checker and packer."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from filterformer.errors import ConfigError, DataError, SubmissionError
from filterformer.evaluation.segf1 import binarize
from filterformer.io import PARTIAL_MARK, write_png
from filterformer.submission import (
    MAPS_DIR,
    MASKS_DIR,
    OFFICIAL_COUNTS,
    PRIVATE_SPLITS,
    MapRescale,
    SubmissionWriter,
    check_submission,
    expected_stems,
    pack_submission,
    record_path,
    require_valid,
)

SHAPE = (4, 6)
SMALL_COUNTS = {category: 2 for category in OFFICIAL_COUNTS}
RESCALE = MapRescale.from_range(0.0, 2.0)
THRESHOLD = 0.7


def _scores(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.4, size=shape).astype(np.float32)


def _private_relpaths(counts):
    for category, count in counts.items():
        for split in PRIVATE_SPLITS:
            for stem in expected_stems(split, count):
                yield category, f"{split}/{stem}"


def _make_submission(root: Path, counts=SMALL_COUNTS, threshold=THRESHOLD) -> Path:
    writers = {c: SubmissionWriter(root, c, RESCALE, threshold) for c in counts}
    for seed, (category, relpath) in enumerate(_private_relpaths(counts)):
        writers[category].write(relpath, _scores(seed), shape=SHAPE)
    return root


def _make_data_root(root: Path, counts=SMALL_COUNTS, shape=SHAPE) -> Path:
    image = np.zeros((*shape, 3), np.uint8)
    for category, relpath in _private_relpaths(counts):
        write_png(root / category / f"{relpath}.png", image)
    return root


@pytest.fixture
def submission(tmp_path) -> Path:
    return _make_submission(tmp_path / "team_run")


# ---------------------------------------------------------------------------- rescale


def test_from_range_maps_the_calibration_range_to_0_1000():
    rescale = MapRescale.from_range(0.25, 0.75)
    np.testing.assert_allclose(rescale.apply(np.array([0.25, 0.5, 0.75])), [0, 500, 1000])
    np.testing.assert_allclose(rescale.invert(np.array([0, 1000])), [0.25, 0.75])
    assert MapRescale.from_dict(rescale.to_dict()) == rescale


@pytest.mark.parametrize("low, high", [(1.0, 1.0), (2.0, 1.0), (0.0, float("nan"))])
def test_degenerate_calibration_range_is_refused(low, high):
    with pytest.raises(ConfigError, match="high > low"):
        MapRescale.from_range(low, high)


def test_non_monotone_rescale_is_refused():
    with pytest.raises(ConfigError, match="scale"):
        MapRescale(offset=0.0, scale=-1.0)


def _threshold_probe(t: float) -> np.ndarray:
    """Scores at, just around and within a few float16 steps of ``t``, plus random ones."""
    t32 = np.float32(t)
    near = [t32, np.nextafter(t32, np.float32(0)), np.nextafter(t32, np.float32(9))]
    dense = np.linspace(t - 3e-3, t + 3e-3, 4001, dtype=np.float32)
    spread = np.random.default_rng(0).uniform(-1.0, 3.0, 4000).astype(np.float32)
    return np.concatenate([near, dense, spread]).reshape(-1, 3)


# The last one rounds up to a float32 score: binarize compares float32 maps in float32.
@pytest.mark.parametrize(
    "t", [0.7, 0.3333333, 1.2322586555793770, np.float32(0.51), float(np.float32(0.7)) - 1e-12]
)
def test_encoded_map_thresholds_exactly_like_the_scores(t):
    rescale = MapRescale.from_range(0.1, 1.9)
    scores = _threshold_probe(float(t))
    half, mask = rescale.encode(scores, float(t))
    assert half.dtype == np.float16 and np.isfinite(half).all()
    np.testing.assert_array_equal(mask, binarize(scores, float(t)))
    np.testing.assert_array_equal(half > rescale.threshold(float(t)), mask)
    # The snap moves a value by at most one float16 step from plain rounding.
    plain = rescale.apply(scores).astype(np.float16)
    step = np.abs(np.spacing(plain)).astype(np.float32)
    assert (np.abs(half.astype(np.float32) - plain.astype(np.float32)) <= step).all()


def test_encoded_map_is_a_monotone_function_of_the_score():
    rescale = MapRescale.from_range(0.0, 1.0)
    scores = np.concatenate([_threshold_probe(0.5).ravel(), [-1e9, 1e9, 5e3]])
    half, _ = rescale.encode(scores, 0.5)
    order = np.argsort(scores, kind="stable")
    assert (np.diff(half[order].astype(np.float32)) >= 0).all()
    assert half.max() == np.float16(65504) and half.min() == np.float16(-65504)  # clipped


def test_non_finite_scores_are_refused():
    with pytest.raises(DataError, match="NaN or inf"):
        RESCALE.encode(np.array([[0.1, np.nan]], np.float32), THRESHOLD)


def test_threshold_beyond_float16_range_is_refused():
    with pytest.raises(ConfigError, match="float16 limit"):
        MapRescale.from_range(0.0, 1e-3).threshold(1e3)


# ----------------------------------------------------------------------------- writer


def test_writer_layout_and_file_formats(tmp_path):
    writer = SubmissionWriter(tmp_path / "out", "vial", RESCALE, THRESHOLD)
    scores = _scores(1, (5, 7))
    assert writer.write("test_public/bad/003_overexposed", scores, shape=(5, 7))
    tiff = tmp_path / "out" / MAPS_DIR / "vial" / "test_public" / "bad" / "003_overexposed.tiff"
    png = tmp_path / "out" / MASKS_DIR / "vial" / "test_public" / "bad" / "003_overexposed.png"
    assert writer.paths("test_public/bad/003_overexposed") == (tiff, png)
    half = tifffile.imread(tiff)
    assert half.dtype == np.float16 and half.shape == (5, 7)
    with Image.open(png) as image:
        assert image.mode == "L"
        mask = np.asarray(image)
    assert set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask == 255, scores > THRESHOLD)
    np.testing.assert_array_equal(half > RESCALE.threshold(THRESHOLD), mask == 255)


def test_writer_refuses_maps_not_at_the_image_size(tmp_path):
    writer = SubmissionWriter(tmp_path / "out", "vial", RESCALE, THRESHOLD)
    with pytest.raises(DataError, match="original image size"):
        writer.write("test_private/000_regular", _scores(0, (4, 6)), shape=(8, 12))


def test_writer_without_threshold_writes_maps_only_and_checker_warns(tmp_path):
    root = _make_submission(tmp_path / "maps_only", threshold=None)
    assert not (root / MASKS_DIR).exists()
    problems = check_submission(root, counts=SMALL_COUNTS)
    assert [p.severity for p in problems] == ["warning"]
    assert "SegF1 and ClassF1 as 0" in problems[0].message


def test_each_split_is_binarised_at_its_own_threshold(tmp_path):
    mixed = 1.2
    writer = SubmissionWriter(
        tmp_path / "out",
        "walnuts",
        RESCALE,
        THRESHOLD,
        split_thresholds={"test_private_mixed": mixed},
    )
    scores = _scores(3, (6, 8))
    writer.write("test_private/000_regular", scores, split="test_private")
    writer.write("test_private_mixed/000_mixed", scores, split="test_private_mixed")
    regular = np.asarray(Image.open(writer.paths("test_private/000_regular")[1])) == 255
    mixed_mask = np.asarray(Image.open(writer.paths("test_private_mixed/000_mixed")[1])) == 255
    np.testing.assert_array_equal(regular, scores > THRESHOLD)
    np.testing.assert_array_equal(mixed_mask, scores > mixed)
    assert regular.sum() > mixed_mask.sum()
    record = json.loads(writer.record_file.read_text())["walnuts"]
    assert record["splits"]["test_private_mixed"]["threshold"] == mixed


def test_postprocess_shapes_the_png_only(tmp_path):
    writer = SubmissionWriter(
        tmp_path / "out", "can", RESCALE, THRESHOLD, postprocess=lambda m: np.ones_like(m)
    )
    writer.write("test_private/000_regular", _scores(2))
    tiff, png = writer.paths("test_private/000_regular")
    assert (np.asarray(Image.open(png)) == 255).all()
    assert not (tifffile.imread(tiff) > RESCALE.threshold(THRESHOLD)).all()


def test_record_stores_rescale_and_threshold_beside_the_folder(tmp_path):
    SubmissionWriter(tmp_path / "sub", "rice", RESCALE, THRESHOLD)
    SubmissionWriter(tmp_path / "sub", "can", MapRescale(0.5, 2.0), None)

    record = json.loads(record_path(tmp_path / "sub").read_text())
    assert record_path(tmp_path / "sub") == tmp_path / "sub.rescale.json"
    assert record["rice"] == {
        "offset": 0.0,
        "scale": 500.0,
        "threshold": THRESHOLD,
        "threshold_rescaled": RESCALE.threshold(THRESHOLD),
    }
    assert record["can"]["threshold"] is None


def test_resuming_with_another_rescale_is_refused(tmp_path):
    SubmissionWriter(tmp_path / "sub", "rice", RESCALE, THRESHOLD)
    SubmissionWriter(tmp_path / "sub", "rice", RESCALE, THRESHOLD)  # same settings: fine
    with pytest.raises(SubmissionError, match="must use one"):
        SubmissionWriter(tmp_path / "sub", "rice", MapRescale(0.0, 1.0), THRESHOLD)


class _Interrupt(Exception):
    pass


def _export(root: Path, relpaths: list[str], stop_after: int | None = None) -> int:
    """Write maps for ``relpaths``, raising after ``stop_after`` writes; count the writes."""
    writer = SubmissionWriter(root, "walnuts", RESCALE, THRESHOLD)
    written = 0
    for seed, relpath in enumerate(relpaths):
        if stop_after is not None and written == stop_after:
            raise _Interrupt
        written += writer.write(relpath, _scores(seed))
    return written


def test_interrupted_export_resumes_without_redoing_finished_files(tmp_path):
    root = tmp_path / "sub"
    relpaths = [f"test_private/{s}" for s in expected_stems("test_private", 6)]
    with pytest.raises(_Interrupt):
        _export(root, relpaths, stop_after=4)
    finished = sorted((root / MAPS_DIR).rglob("*.tiff")) + sorted((root / MASKS_DIR).rglob("*.png"))
    assert len(finished) == 8
    # A killed run may also leave a temporary file behind.
    leftover = root / MAPS_DIR / "walnuts" / "test_private" / f".004_regular{PARTIAL_MARK}x.tiff"
    leftover.write_bytes(b"half a tiff")
    before = {p: p.stat().st_mtime_ns for p in finished}
    assert _export(root, relpaths) == 2
    assert {p: p.stat().st_mtime_ns for p in finished} == before
    assert not list(root.rglob(f"*{PARTIAL_MARK}*"))
    assert len(list((root / MAPS_DIR).rglob("*.tiff"))) == 6
    assert len(list((root / MASKS_DIR).rglob("*.png"))) == 6


# ---------------------------------------------------------------------------- checker


def _encoded(write, array) -> bytes:
    buffer = io.BytesIO()
    write(buffer, array)
    return buffer.getvalue()


def test_official_counts_submission_passes(tmp_path):
    # 4090 maps + 4090 masks; tiny files copied from bytes to keep this fast.
    tiff = _encoded(tifffile.imwrite, np.zeros(SHAPE, np.float16))
    png = _encoded(lambda b, a: Image.fromarray(a).save(b, format="PNG"), np.zeros(SHAPE, np.uint8))
    root = tmp_path / "official"
    for category, relpath in _private_relpaths(OFFICIAL_COUNTS):
        for tree, suffix, data in ((MAPS_DIR, ".tiff", tiff), (MASKS_DIR, ".png", png)):
            path = root / tree / category / f"{relpath}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    assert len(list(root.rglob("*.tiff"))) == 4090
    assert check_submission(root) == []


def test_writer_output_passes_with_and_without_data_root(submission, tmp_path):
    data_root = _make_data_root(tmp_path / "mvtec_ad_2")
    assert check_submission(submission, counts=SMALL_COUNTS) == []
    assert check_submission(submission, data_root, counts=SMALL_COUNTS) == []
    assert require_valid(submission, data_root, counts=SMALL_COUNTS) == []


def _tiff(root: Path, category="vial", split="test_private", stem="001_regular") -> Path:
    return root / MAPS_DIR / category / split / f"{stem}.tiff"


def _png(root: Path, category="vial", split="test_private_mixed", stem="000_mixed") -> Path:
    return root / MASKS_DIR / category / split / f"{stem}.png"


def _fault_float32(root):
    tifffile.imwrite(_tiff(root), np.zeros(SHAPE, np.float32))
    return _tiff(root), "not float16"


def _fault_three_channels(root):
    tifffile.imwrite(_tiff(root), np.zeros((*SHAPE, 3), np.float16), photometric="rgb")
    return _tiff(root), "not a single-channel image"


def _fault_nan(root):
    amap = np.zeros(SHAPE, np.float16)
    amap[1, 2] = np.nan
    amap[0, 0] = np.inf
    tifffile.imwrite(_tiff(root), amap)
    return _tiff(root), "1 NaN and 1 infinite"


def _fault_png_128(root):
    Image.fromarray(np.full(SHAPE, 128, np.uint8)).save(_png(root))
    return _png(root), "not in {0, 255}"


def _fault_rgb_png(root):
    Image.fromarray(np.zeros((*SHAPE, 3), np.uint8)).save(_png(root))
    return _png(root), "not a single-channel image (mode 'RGB')"


def _fault_mode_1_png(root):
    Image.fromarray(np.zeros(SHAPE, bool)).convert("1").save(_png(root))
    return _png(root), "1-bit PNG"


def _fault_16_bit_png(root):
    Image.fromarray(np.full(SHAPE, 255, np.uint16)).save(_png(root))
    return _png(root), "not 8-bit grey"


def _fault_missing_file(root):
    _tiff(root).unlink()
    return _tiff(root).parent, "1 files missing: 001_regular.tiff"


def _fault_extra_file(root):
    extra = _tiff(root, stem="002_regular")
    extra.write_bytes(_tiff(root).read_bytes())
    return extra, "unexpected file name"


def _fault_wrong_name(root):
    wrong = _tiff(root, stem="001_mixed")
    _tiff(root).rename(wrong)
    return wrong, "unexpected file name"


def _fault_tif_suffix(root):
    wrong = _tiff(root).with_suffix(".tif")
    _tiff(root).rename(wrong)
    return wrong, "expected only .tiff files"


def _fault_extra_top_folder(root):
    (root / "notes").mkdir()
    return root / "notes", "superfluous folder"


def _fault_ds_store(root):
    store = _png(root).parent / ".DS_Store"
    store.write_bytes(b"\0")
    return store, "hidden entry"


def _fault_missing_category(root):
    for tree in (MAPS_DIR, MASKS_DIR):
        for path in sorted((root / tree / "rice").rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (root / tree / "rice").rmdir()
    return root / MAPS_DIR / "rice", "missing category folder"


def _fault_missing_maps_tree(root):
    (root / MAPS_DIR).rename(root / "maps")
    return root / MAPS_DIR, "missing; a submission holds"


FAULTS = [
    _fault_float32,
    _fault_three_channels,
    _fault_nan,
    _fault_png_128,
    _fault_rgb_png,
    _fault_mode_1_png,
    _fault_16_bit_png,
    _fault_missing_file,
    _fault_extra_file,
    _fault_wrong_name,
    _fault_tif_suffix,
    _fault_extra_top_folder,
    _fault_ds_store,
    _fault_missing_category,
    _fault_missing_maps_tree,
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__[len("_fault_") :])
def test_each_fault_is_reported_naming_the_file(submission, fault):
    path, fragment = fault(submission)
    problems = [
        p for p in check_submission(submission, counts=SMALL_COUNTS) if p.severity == "error"
    ]
    assert any(p.path == path and fragment in p.message for p in problems), problems
    with pytest.raises(SubmissionError, match=str(path).replace(".", r"\.")):
        require_valid(submission, counts=SMALL_COUNTS)


def test_wrong_size_is_reported_against_the_source_image(submission, tmp_path):
    data_root = _make_data_root(tmp_path / "mvtec_ad_2")
    write_png(
        data_root / "vial" / "test_private" / "001_regular.png", np.zeros((8, 6, 3), np.uint8)
    )
    tiff, png = _tiff(submission), _png(submission, split="test_private", stem="001_regular")
    problems = check_submission(submission, data_root, counts=SMALL_COUNTS)
    assert {p.path for p in problems} == {tiff, png}
    assert all("is 4x6 (HxW) but its source image is 8x6" in p.message for p in problems)


def test_png_size_is_compared_with_its_tiff_without_data_root(submission):
    Image.fromarray(np.zeros((3, 6), np.uint8)).save(_png(submission))
    problems = check_submission(submission, counts=SMALL_COUNTS)
    assert [(p.path, "but its TIFF map is 4x6" in p.message) for p in problems] == [
        (_png(submission), True)
    ]


def test_every_problem_is_collected_not_only_the_first(submission):
    faults = [_fault_float32, _fault_png_128, _fault_ds_store, _fault_extra_top_folder]
    expected = [fault(submission) for fault in faults]
    problems = check_submission(submission, counts=SMALL_COUNTS)
    for path, fragment in expected:
        assert any(p.path == path and fragment in p.message for p in problems)


def test_a_file_instead_of_a_folder_is_refused(tmp_path):
    (tmp_path / "sub.txt").write_text("")
    [problem] = check_submission(tmp_path / "sub.txt")
    assert "not a directory" in problem.message


# ------------------------------------------------------------------------------- pack


def test_pack_writes_members_under_the_folder_name(submission):
    archive = pack_submission(submission, counts=SMALL_COUNTS)
    assert archive == submission.with_name("team_run.tar.gz")
    with tarfile.open(archive, "r:gz") as tar:
        names = tar.getnames()
        member = tar.extractfile("team_run/anomaly_images/vial/test_private/001_regular.tiff")
        half = tifffile.imread(io.BytesIO(member.read()))
    files = sorted(p.relative_to(submission.parent).as_posix() for p in submission.rglob("*.*"))
    assert names == files and len(names) == 2 * 2 * 2 * len(SMALL_COUNTS)
    assert half.dtype == np.float16 and half.shape == SHAPE
    assert not list(submission.parent.glob(f"*{PARTIAL_MARK}*"))


def test_pack_to_a_chosen_path(submission, tmp_path):
    target = tmp_path / "uploads" / "final.tar.gz"
    target.parent.mkdir()
    assert pack_submission(submission, target, counts=SMALL_COUNTS) == target
    with tarfile.open(target) as tar:
        assert all(name.startswith("team_run/") for name in tar.getnames())


def test_pack_refuses_an_invalid_submission_and_writes_nothing(submission):
    _fault_png_128(submission)
    with pytest.raises(SubmissionError, match="not in"):
        pack_submission(submission, counts=SMALL_COUNTS)
    assert not submission.with_name("team_run.tar.gz").exists()


def test_pack_refuses_a_target_inside_the_folder(submission):
    with pytest.raises(SubmissionError, match="inside the submission folder"):
        pack_submission(submission, submission / "x.tar.gz", counts=SMALL_COUNTS)
    assert sorted(p.name for p in submission.iterdir()) == [MAPS_DIR, MASKS_DIR]
