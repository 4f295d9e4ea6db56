"""Anomaly maps at each image's original size, batched, whole-image or tiled.

Pipeline per network input: the model's maps at network resolution, fused by the category's
mode (:func:`fuse_maps` with the validation statistics of ``map_stats.json``), smoothed by a
Gaussian (:class:`Smoothing`), then brought back to the original H x W by
:meth:`InputGeometry.to_original` (undoing the centre crop, never stretching).

Smoothing follows INP-Former (a 5 x 5 kernel with sigma 4, as the INP-Former code evaluates). By
default it runs at network resolution rather than on INP-Former's 256 x 256 evaluation map,
since our maps go back to the full image size, and it pads by replicating the border instead
of INP-Former's zero padding, which darkens the map along the image border. Parity mode
(``Smoothing(size=(256, 256), padding="zero")``) reproduces the official evaluation map: the
map is resized to 256 x 256 (bilinear, align_corners=False), blurred with zero padding, then
resized back. It exists to compare with the official numbers, not for the best full-resolution
maps (it throws away detail that the network resolution keeps). ``Smoothing(at_original=True,
padding="zero")`` is the ISVL hybrid code's order instead: the model's map is made at the
original size of the image (or tile) and blurred there; ``levels=255`` turns every map into the
code's 8-bit levels, floor(255 * clip(m, 0, 1)).

The network part is a :class:`MapBackend`: :class:`TorchBackend` runs the model itself (fusing
any set of modes from one forward pass), and an exported graph runs in ONNX Runtime or OpenVINO
(:mod:`filterformer.runtime`); reading, tiling, the way back and the quantisation are the one
NumPy loop of :mod:`filterformer.inference.original_maps`, shared by both.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from filterformer.data.sample import Sample
from filterformer.data.tiling import AnyTiling
from filterformer.data.transforms import InputGeometry
from filterformer.errors import ConfigError
from filterformer.inference.original_maps import MapBackend, original_size_maps
from filterformer.models.fusion import fuse_maps

MapStats = Mapping[str, tuple[float, float]]


PADDINGS: tuple[str, ...] = ("replicate", "zero", "reflect")


@dataclass(frozen=True)
class Smoothing:
    """How a fused map is smoothed (the config's ``eval`` section; defaults mirror it).

    ``sigma`` and ``kernel_size``: the Gaussian (sigma <= 0: no smoothing). ``padding``:
    ``replicate`` (ours), ``zero`` (INP-Former's) or ``reflect`` (torchvision's gaussian_blur,
    as the retrieval presets' official code). ``size``: None smooths at network
    resolution; an (h, w) smooths at that size (INP-Former's 256 x 256 protocol) and resizes
    back. ``at_original``: the model makes its map at each image's (tile's) original size and
    it is smoothed there (ISVL hybrid code; torch models, squashed inputs without a crop).
    ``levels``: maps become floor(levels * clip(m, 0, 1)), whole numbers 0..levels (ISVL hybrid
    code: 255, its 8-bit maps); None keeps them as they are.
    """

    sigma: float = 4.0
    kernel_size: int = 5
    padding: str = "replicate"
    size: tuple[int, int] | None = None
    at_original: bool = False
    levels: int | None = None

    def __post_init__(self) -> None:
        if self.padding not in PADDINGS:
            raise ConfigError(
                f"eval.blur_padding {self.padding!r} is unknown; choose one of "
                f"{', '.join(PADDINGS)}."
            )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"eval.blur_kernel {self.kernel_size} must be a positive odd int.")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ConfigError(
                f"eval.protocol_size {self.size} must be null or a (height, width) pair."
            )
        if self.at_original and self.size is not None:
            raise ConfigError(
                "eval.blur_at=original smooths at each image's own size: set "
                "eval.protocol_size=null."
            )
        if self.levels is not None and self.levels < 1:
            raise ConfigError(f"eval.levels {self.levels} must be null or an integer >= 1.")


DEFAULT_SMOOTHING = Smoothing()


def gaussian_blur(
    maps: torch.Tensor, sigma: float, kernel_size: int = 5, padding: str = "replicate"
) -> torch.Tensor:
    """Smooth B x H x W maps with a normalised separable Gaussian.

    ``padding`` is ``replicate`` (border values repeated), ``zero`` (as a zero-padded
    convolution, which pulls the border towards 0) or ``reflect`` (mirrored without repeating
    the border value, as torchvision's gaussian_blur; needs maps larger than half the kernel).
    """
    if sigma <= 0:
        return maps
    offsets = torch.arange(kernel_size, dtype=maps.dtype, device=maps.device) - kernel_size // 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    pad = kernel_size // 2
    mode = "constant" if padding == "zero" else padding
    out = F.pad(maps.unsqueeze(1), (pad, pad, pad, pad), mode=mode)
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1)).squeeze(1)


def _resize_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """B x H x W -> B x h x w, bilinear with align_corners=False (INP-Former's resize)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    resized = F.interpolate(
        maps.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False
    )
    return resized.squeeze(1)


def smooth_maps(maps: torch.Tensor, smoothing: Smoothing) -> torch.Tensor:
    """B x h x w maps, smoothed at ``smoothing.size`` (returned at that size) or in place."""
    if smoothing.size is not None:
        maps = _resize_maps(maps, smoothing.size)
    return gaussian_blur(maps, smoothing.sigma, smoothing.kernel_size, smoothing.padding)


def finish_maps(
    raw: Mapping[str, torch.Tensor],
    mode: str,
    map_stats: MapStats | None,
    smoothing: Smoothing,
) -> torch.Tensor:
    """Fuse the model's raw maps by ``mode`` and smooth, at network resolution."""
    fused = fuse_maps(raw, mode, map_stats).float()
    return _resize_maps(smooth_maps(fused, smoothing), fused.shape[-2:])


@torch.no_grad()
def network_maps(
    model: nn.Module,
    images: torch.Tensor,
    mode: str,
    map_stats: MapStats | None = None,
    smoothing: Smoothing = DEFAULT_SMOOTHING,
) -> torch.Tensor:
    """Fused, smoothed B x h x w maps of normalised B x 3 x h x w network inputs."""
    return finish_maps(model.anomaly_maps(images), mode, map_stats, smoothing)


def _raw_maps(model: nn.Module, inputs: torch.Tensor, size: Sequence[int] | None) -> dict:
    """The model's maps at network resolution, or at ``size``: made there by a model whose
    ``anomaly_maps`` takes a size (INP-Former: from its token grid), else resized bilinearly."""
    if size is None:
        return model.anomaly_maps(inputs)
    if "size" in inspect.signature(model.anomaly_maps).parameters:
        return model.anomaly_maps(inputs, size=tuple(size))
    return {name: _resize_maps(m, size) for name, m in model.anomaly_maps(inputs).items()}


class TorchBackend:
    """The PyTorch model as a :class:`MapBackend` (put in eval mode on ``device``)."""

    def __init__(
        self,
        model: nn.Module,
        map_stats: MapStats | None = None,
        smoothing: Smoothing = DEFAULT_SMOOTHING,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model.eval().to(device)
        self.map_stats = map_stats
        self.smoothing = smoothing
        self.device = device

    def maps(
        self, inputs: np.ndarray, modes: Sequence[str], size: Sequence[int] | None = None
    ) -> dict[str, np.ndarray]:
        """Every mode fused from one forward pass of the model; at ``size`` when given
        (``Smoothing.at_original``), else at network resolution."""
        with torch.no_grad():
            raw = _raw_maps(self.model, torch.from_numpy(inputs).to(self.device), size)
        return {m: finish_maps(raw, m, self.map_stats, self.smoothing).cpu().numpy() for m in modes}


def predict_mode_maps(
    model: nn.Module | MapBackend,
    samples: Sequence[Sample],
    geometry: InputGeometry,
    *,
    modes: Sequence[str],
    map_stats: MapStats | None = None,
    smoothing: Smoothing = DEFAULT_SMOOTHING,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    tiling: AnyTiling | None = None,
    progress: bool = True,
) -> Iterator[tuple[Sample, dict[str, np.ndarray]]]:
    """Yield (sample, mode -> H x W float32 map at the original size), in sample order.

    ``model`` is a torch model (run as a :class:`TorchBackend` with ``map_stats``,
    ``smoothing`` and ``device``) or any :class:`MapBackend`, which brings its own fusion and
    smoothing. Every mode is fused from the same forward pass, so scoring several fusion modes
    costs one inference. Whole images are batched ``batch_size`` at a time; with ``tiling``
    the tiles of one image are.
    """
    backend = (
        TorchBackend(model, map_stats, smoothing, device) if isinstance(model, nn.Module) else model
    )
    if smoothing.at_original:
        _check_at_original(backend, geometry)
    yield from original_size_maps(
        backend,
        samples,
        geometry,
        modes=modes,
        batch_size=batch_size,
        tiling=tiling,
        progress=progress,
        at_original=smoothing.at_original,
        levels=smoothing.levels,
    )


def _check_at_original(backend: MapBackend, geometry: InputGeometry) -> None:
    """Refuse ``Smoothing.at_original`` where maps cannot be made at the original size."""
    if not isinstance(backend, TorchBackend):
        raise ConfigError(
            "eval.blur_at=original needs the torch model (its maps are made at each image's "
            "size); use --backend torch, or a run with eval.blur_at=network."
        )
    if geometry.fit != "squash" or geometry.crop_hw is not None:
        raise ConfigError(
            "eval.blur_at=original needs input.fit=squash and input.crop=null (the map covers "
            "the whole image); or set eval.blur_at=network."
        )


def predict_maps(
    model: nn.Module | MapBackend,
    samples: Sequence[Sample],
    geometry: InputGeometry,
    *,
    mode: str,
    **options: Any,
) -> Iterator[tuple[Sample, np.ndarray]]:
    """Yield (sample, H x W float32 map at the sample's original size) for one fusion mode.

    ``options`` are those of :func:`predict_mode_maps` (map_stats, smoothing, batch_size,
    device, tiling, progress).
    """
    for sample, maps in predict_mode_maps(model, samples, geometry, modes=(mode,), **options):
        yield sample, maps[mode]
