"""Fusion of a model's maps into one: the modes of ``eval.default_mode`` and fusion.json.

Shared by every family: a single-map family (CPR's ``cpr``, EAR's ``msgms``) passes its map
through; Filter-Former's ``inp`` and ``filter`` maps combine by z-scores or ratios against
their validation statistics (docs/design.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from filterformer.errors import ConfigError

MAP_MODES = ("inp", "filter", "mean", "max", "product")
FUSED_MODES = ("mean", "max", "product")
FUSE_EPS = 1e-8


def fuse_maps(
    maps: Mapping[str, torch.Tensor],
    mode: str,
    stats: Mapping[str, tuple[float, float]] | None = None,
) -> torch.Tensor:
    """Combine the "inp" and "filter" maps (B x H x W) into one map by `mode`.

    - "inp" / "filter", or the name of any other map of the model (EAR's "msgms"): that map,
      unnormalised.
    - "mean" / "max": mean / maximum of the z-scores (m - mean_m) / std_m.
    - "product": geometric mean sqrt(r_inp * r_filter) of the ratios
      r_m = max(m, 1e-8) / mean_m. The maps are cosine distances (>= 0), so dividing by the
      validation mean keeps them positive, which a z-score would not.
    `stats` maps "inp" and "filter" to their validation (mean, std); std and mean are floored
    at 1e-8.
    """
    if mode in maps and mode not in FUSED_MODES:
        return maps[mode]
    if mode not in MAP_MODES:
        valid = [*MAP_MODES, *sorted(set(maps) - set(MAP_MODES))]
        raise ConfigError(f"unknown map mode {mode!r}; valid: {', '.join(valid)}")
    needed = (mode,) if mode in ("inp", "filter") else ("inp", "filter")
    missing = [name for name in needed if name not in maps]
    if missing:
        raise ConfigError(
            f"map mode {mode!r} needs the {' and '.join(needed)} map(s), but the model gives only "
            f"{', '.join(maps)}; use the filterformer model or mode 'inp'"
        )
    if stats is None or any(name not in stats for name in needed):
        raise ConfigError(
            f"map mode {mode!r} needs validation (mean, std) for 'inp' and 'filter' "
            f"(map_stats.json); got {sorted(stats or {})}"
        )
    inp, filt = (maps[name] for name in needed)
    (mean_i, std_i), (mean_f, std_f) = (stats[name] for name in needed)
    if mode == "product":
        ratio_i = inp.clamp_min(FUSE_EPS) / max(mean_i, FUSE_EPS)
        ratio_f = filt.clamp_min(FUSE_EPS) / max(mean_f, FUSE_EPS)
        return (ratio_i * ratio_f).sqrt()
    z_i = (inp - mean_i) / max(std_i, FUSE_EPS)
    z_f = (filt - mean_f) / max(std_f, FUSE_EPS)
    return (z_i + z_f) / 2 if mode == "mean" else torch.maximum(z_i, z_f)
