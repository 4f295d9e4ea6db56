"""The INP-Former protocol's maps and ground truth (``eval.protocol=inpformer``).

As the INP-Former code evaluates (its ``evaluation_batch`` with ``resize_mask=256`` and
``max_ratio=0.01``):

- map: the model's fused map of the whole network input (the centre crop), resized to
  256 x 256 (bilinear, align_corners=False) and smoothed there by a 5 x 5 Gaussian with
  sigma 4, zero padded; nothing is mapped back to the original image;
- ground truth: the mask goes through the image's geometry with PIL's bilinear resize (the
  code's torchvision ``Resize`` on the 0/255 mask) and the centre crop, then to 256 x 256 by
  nearest neighbour, and is binarised at 0.5;
- image score: mean of the top 1 % of the 256 x 256 map (``eval.image_score`` may pick max).

Pixels outside the centre crop are never scored, as in the INP-Former code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from filterformer.data.sample import Sample
from filterformer.data.transforms import InputGeometry
from filterformer.errors import ConfigError
from filterformer.evaluation.protocol import InpFormerMetrics, image_score
from filterformer.inference.original_maps import batches
from filterformer.inference.predict import Smoothing, smooth_maps
from filterformer.models.fusion import fuse_maps
from filterformer.progress import progress_bar

PROTOCOL_SIZE = (256, 256)
"""INP-Former code: maps and masks are evaluated at 256 x 256 (resize_mask=256)."""
PROTOCOL_SMOOTHING = Smoothing(sigma=4.0, kernel_size=5, padding="zero", size=PROTOCOL_SIZE)
"""INP-Former code: get_gaussian_kernel(kernel_size=5, sigma=4), a zero-padded convolution."""
GT_THRESHOLD = 0.5
"""INP-Former code: the resized mask is binarised with > 0.5."""


@torch.no_grad()
def protocol_maps(
    model: nn.Module,
    samples: Sequence[Sample],
    geometry: InputGeometry,
    *,
    mode: str,
    map_stats: Mapping[str, tuple[float, float]] | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Iterator[tuple[Sample, np.ndarray]]:
    """Yield (sample, 256 x 256 float32 protocol map) in sample order, whole images batched."""
    model.eval().to(device)
    bar = progress_bar(total=len(samples), desc="predict", unit="img", enabled=progress)
    with bar:
        for batch in batches(samples, batch_size):
            inputs = torch.stack([geometry.to_tensor(s.load_image()) for s in batch]).to(device)
            fused = fuse_maps(model.anomaly_maps(inputs), mode, map_stats).float()
            maps = smooth_maps(fused, PROTOCOL_SMOOTHING).cpu().numpy()
            bar.update(len(batch))
            yield from zip(batch, maps, strict=True)


def protocol_mask(mask: np.ndarray, geometry: InputGeometry) -> np.ndarray:
    """An H x W bool mask at the original size -> 256 x 256 bool protocol GT."""
    check_squash(geometry)
    height, width = geometry.resize_hw
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    resized = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    cropped = torch.from_numpy(geometry.center_crop(resized).astype(np.float32) / 255.0)
    small = F.interpolate(cropped[None, None], size=PROTOCOL_SIZE, mode="nearest")[0, 0]
    return (small > GT_THRESHOLD).numpy()


def check_squash(geometry: InputGeometry) -> None:
    """Refuse a letterboxing geometry: the protocol stretches images as the INP-Former code."""
    if geometry.fit != "squash":
        raise ConfigError(
            f"the inpformer protocol needs input.fit=squash (the INP-Former code stretches every "
            f"image to the input size), got input.fit={geometry.fit}. Evaluate with "
            "--protocol mvtec_ad2, or train with input.fit=squash."
        )


def evaluate_inpformer(
    model: nn.Module,
    samples: Sequence[Sample],
    geometry: InputGeometry,
    *,
    image_score_rule: str,
    **options: Any,
) -> tuple[InpFormerMetrics, list[str]]:
    """The INP-Former metric set of one category's samples, and each image's relative path.

    ``options`` are those of :func:`protocol_maps` (mode, map_stats, batch_size, device,
    progress).
    """
    check_squash(geometry)
    metrics = InpFormerMetrics()
    images = []
    for sample, amap in protocol_maps(model, samples, geometry, **options):
        mask = sample.load_mask()  # None without a label: update() refuses the sample
        gt = np.zeros(PROTOCOL_SIZE, bool) if mask is None else protocol_mask(mask, geometry)
        score = image_score(amap, image_score_rule)
        metrics.update(amap, gt, score, sample.label, str(sample.path))
        images.append(f"{sample.relpath}{sample.path.suffix}")
    return metrics, images
