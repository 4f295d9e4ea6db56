"""MapAudit: what ff-eval --maps warns about (or refuses with --strict), at the stated limits
(more than 1 % of nonzero pixels flushed to zero, or 10 % of distinct scores merged)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from filterformer.evaluation.map_audit import MapAudit

# 1000 scores in [1, 2) on float16's grid there (spacing 2**-10): float16 keeps all distinct.
NORMAL = (1.0 + np.arange(1000) / 1024).astype(np.float32)


def audit_of(*maps: np.ndarray, float16: bool = True) -> list[str]:
    audit = MapAudit("maps/cat/test_public", float16=float16)
    for i, amap in enumerate(maps):
        audit.update(amap.reshape(1, -1), Path(f"map{i}.tiff"))
    return audit.finish()


def test_float16_maps_and_well_scaled_float32_maps_pass() -> None:
    rng = np.random.default_rng(0)
    wide = rng.lognormal(np.log(0.1), 2.0, 5000).astype(np.float32)  # 1e-4 .. 1e2
    assert audit_of(wide * np.float32(100)) == []
    assert audit_of(NORMAL.astype(np.float16), np.zeros(10, np.float16)) == []
    assert audit_of(NORMAL * np.float32(1e-10), float16=False) == []  # --float32: exact


def test_tiny_float32_maps_are_reported_with_pixel_counts_and_the_fix() -> None:
    (finding,) = audit_of(NORMAL * np.float32(1e-10), np.zeros(5, np.float32))
    assert "maps/cat/test_public" in finding
    assert "1000 of 1000 nonzero pixels (100.0%) lie below" in finding
    assert "1000 (100.0%) flush to zero" in finding
    assert "distinct scores become 1 (" in finding  # every score is 0 in float16
    assert "--float32" in finding and "rescale" in finding


@pytest.mark.parametrize(("tiny", "found"), [(10, False), (11, True)])
def test_flush_to_zero_limit_is_one_percent_of_nonzero_pixels(tiny: int, found: bool) -> None:
    """990 well-scaled pixels plus ``tiny`` that flush to zero (1e-9 < 2**-25)."""
    flushed = np.full(tiny, 1e-9, np.float32) * (1 + np.arange(tiny, dtype=np.float32))
    findings = audit_of(np.concatenate([NORMAL[: 1000 - tiny], flushed]))
    assert bool(findings) is found
    if found:
        assert f"{tiny} (1.1%) flush to zero" in findings[0]


@pytest.mark.parametrize(("tiny", "found"), [(100, False), (200, True)])
def test_merge_limit_is_ten_percent_of_distinct_scores(tiny: int, found: bool) -> None:
    """Scores just above 2**-20 are distinct in float32 at 11 bits (1024 per octave) but
    float16 keeps 16 subnormal steps there: ``tiny`` of them merge into a handful."""
    small = np.float32(2.0**-20) * (1 + np.arange(tiny, dtype=np.float32) / 1024)
    findings = audit_of(np.concatenate([NORMAL, small]))
    assert bool(findings) is found
    if found:
        assert "0 (0.0%) flush to zero" in findings[0] and "merged" in findings[0]


def test_integer_maps_are_reported_with_their_type() -> None:
    levels = np.arange(200, dtype=np.uint8)
    (finding,) = audit_of(NORMAL, levels, levels.astype(np.uint16), float16=False)
    assert "2 of 3 maps in maps/cat/test_public are integer TIFFs (uint16, uint8" in finding
    assert "map1.tiff" in finding and "float16" in finding


def test_map_files_without_an_image_are_named(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    for name in ("bad/000_a.tiff", "bad/001_b.tiff", "bad/999_extra.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    audit = MapAudit("x", float16=True)
    audit.check_unmatched(tmp_path, [tmp_path / "bad/000_a.tiff", tmp_path / "bad/001_b.tiff"])
    (finding,) = audit.finish()
    assert finding.startswith(f"maps without an image in the dataset under {tmp_path}: 1 (")
    assert "999_extra.tif" in finding and "notes.txt" not in finding and "--data-root" in finding
