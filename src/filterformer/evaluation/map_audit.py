"""Checks of precomputed maps (ff-eval --maps) that would otherwise pass without a word.

- **Maps without an image**: TIFFs in a split folder that no image of the dataset matches (a
  wrong ``--data-root``, ``--split`` or category folder); they are ignored by the metrics.
- **Integer TIFFs**: the benchmark server reads float16 maps, and integer scores tie every
  pixel of a level (an 8-bit map has at most 256 thresholds).
- **float16 precision**: AU-PRO rounds scores to float16 as the server does. float16 keeps 11
  significant bits only from its smallest normal value 2**-14 (6.1e-05) up; below it values
  lose bits and below 2**-25 they flush to zero, so maps with tiny scores (e.g. 1e-10 x a
  usual map) tie many pixels that their float32 values ranked. Measured over all maps of the
  split: the fraction of nonzero pixels that become 0, and the fraction of distinct scores
  (at float16's 11 significant bits, which any range keeps after a power-of-two rescale)
  merged by the small range. A finding when more than :data:`FLUSH_LIMIT` of the nonzero
  pixels flush to zero or more than :data:`MERGE_LIMIT` of the distinct scores merge; maps
  stored as float16 already are what the server reads and are not checked.

Each finding is one sentence naming the folder, the counts and the fix; ff-eval prints it as
a warning, or with ``--strict`` refuses the evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from filterformer.evaluation.aupro import NUM_KEYS, float16_keys

FLUSH_LIMIT = 0.01
"""A finding when more than 1 % of the nonzero pixels become 0 in float16."""
MERGE_LIMIT = 0.10
"""A finding when float16's range merges more than 10 % of the distinct scores."""
FLOAT16_SMALLEST_NORMAL = 2.0**-14
_DROPPED_BITS = 13
"""float32 has 24 significant bits, float16 11: keys of 11-bit scores drop 13 bits."""
MAP_SUFFIXES = (".tiff", ".tif")


def _count(number: int, noun: str) -> str:
    """``1 map``, ``2 maps``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _examples(paths: list[Path], limit: int = 3) -> str:
    """The first few paths, for a message."""
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (", ..." if len(paths) > limit else "")


class MapAudit:
    """Collects the findings about the maps of one category and split, one map at a time."""

    def __init__(self, where: str, float16: bool) -> None:
        """``where`` names the maps in findings; ``float16``: AU-PRO rounds them to float16."""
        self.where = where
        self.float16 = float16
        self.findings: list[str] = []
        self.maps = 0
        self.integer_maps: list[Path] = []
        self.integer_dtypes: set[str] = set()
        self.nonzero = 0
        self.flushed = 0
        self.below_normal = 0
        self._distinct = np.zeros(1 << (32 - _DROPPED_BITS), dtype=bool)
        self._distinct16 = np.zeros(NUM_KEYS, dtype=bool)

    def check_unmatched(self, folder: Path, expected: Iterable[Path]) -> None:
        """Note the map files under ``folder`` that are not among the ``expected`` paths."""
        wanted = set(expected)
        found = sorted(
            p for p in folder.rglob("*") if p.suffix.lower() in MAP_SUFFIXES and p not in wanted
        )
        if found:
            self.findings.append(
                f"maps without an image in the dataset under {folder}: {len(found)} "
                f"({_examples(found)}); they are not evaluated. Check --data-root, --split and "
                "the category folder."
            )

    def update(self, raw: np.ndarray, path: Path) -> None:
        """Add one map as stored in its file (``raw``: its own dtype)."""
        self.maps += 1
        if raw.dtype.kind in "biu":
            self.integer_maps.append(path)
            self.integer_dtypes.add(str(raw.dtype))
        elif self.float16 and raw.dtype != np.float16:
            self._precision(np.asarray(raw, dtype=np.float32), str(path))

    def _precision(self, amap: np.ndarray, name: str) -> None:
        """Count the pixels and distinct scores of a float32 map that float16 loses."""
        amap = amap + np.float32(0.0)  # -0.0 -> +0.0: one key for zero
        nonzero = amap != 0
        small = nonzero & (np.abs(amap) < FLOAT16_SMALLEST_NORMAL)
        self.nonzero += int(nonzero.sum())
        self.below_normal += int(small.sum())
        if small.any():
            self.flushed += int((amap[small].astype(np.float16) == 0).sum())
        bits = amap.view(np.uint32).ravel()
        self._distinct[(bits + np.uint32(1 << (_DROPPED_BITS - 1))) >> _DROPPED_BITS] = True
        self._distinct16[float16_keys(amap, name)[1] > 0] = True

    def finish(self) -> list[str]:
        """All findings, including those that need every map of the split."""
        findings = list(self.findings)
        if self.integer_maps:
            dtypes = ", ".join(sorted(self.integer_dtypes))
            findings.append(
                f"{len(self.integer_maps)} of {_count(self.maps, 'map')} in {self.where} are "
                f"integer TIFFs ({dtypes}: {_examples(self.integer_maps)}); integer scores tie "
                "every pixel of a level and the benchmark server reads float16. Write float "
                "maps (as ff-predict does)."
            )
        finding = self._precision_finding()
        if finding:
            findings.append(finding)
        return findings

    def _precision_finding(self) -> str | None:
        """The float16 finding of the whole split, if a limit is exceeded."""
        if not self.nonzero:
            return None
        distinct, distinct16 = int(self._distinct.sum()), int(self._distinct16.sum())
        merged = max(distinct - distinct16, 0) / distinct
        flushed = self.flushed / self.nonzero
        if flushed <= FLUSH_LIMIT and merged <= MERGE_LIMIT:
            return None
        return (
            f"maps in {self.where} lose precision in float16 (what AU-PRO and the benchmark "
            f"server read): {self.below_normal} of {self.nonzero} nonzero pixels "
            f"({self.below_normal / self.nonzero:.1%}) lie below float16's smallest normal "
            f"value {FLOAT16_SMALLEST_NORMAL:.2g}, {self.flushed} ({flushed:.1%}) flush to zero, "
            f"and {distinct} distinct scores become {distinct16} ({merged:.1%} merged; limits "
            f"{FLUSH_LIMIT:.0%} flushed, {MERGE_LIMIT:.0%} merged). Evaluate with --float32, "
            "or rescale the maps (one monotone transform per category) before writing them."
        )
