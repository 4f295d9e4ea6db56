"""INP-Former's few-shot setting: K normal images per category, each expanded to fixed views.

As the INP-Former code's few-shot script does (``INP_Former_Few_Shot.py`` with
``utils.augmentation``, after RegAD): the K images of each category are drawn with Python's
``random.sample`` from the category's sorted training images, one seeded stream over the
categories in order; each drawn image, already a normalised network input, is expanded
once into its views (itself, rotations, translations, a horizontal flip, grey, quarter
turns), which are shuffled and trained on as a fixed set. The view parameters come from the
run's config (``setting.views``, configs/setting/few_shot.yaml); no view is random.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from filterformer.data.sample import Sample
from filterformer.errors import ConfigError


def draw_shots(categories: Sequence[Sequence[Sample]], shots: int, seed: int) -> list[list[Sample]]:
    """``shots`` samples of each category's training images, drawn as the INP-Former code does.

    One ``random.Random(seed)`` stream samples the categories in the given order, as the
    code's ``random.sample`` after ``setup_seed`` does, from each category's images in their
    (sorted) order.
    """
    rng = random.Random(seed)
    drawn = []
    for samples in categories:
        if not 1 <= shots <= len(samples):
            where = samples[0].category if samples else "a category"
            raise ConfigError(
                f"setting.shots={shots}: {where} has {len(samples)} training images; choose "
                f"1 to {len(samples)} shots."
            )
        drawn.append(rng.sample(list(samples), shots))
    return drawn


@dataclass(frozen=True)
class FewShotViews:
    """The fixed views of one normalised 3 x H x W image, in the INP-Former code's order.

    Args:
        rotations: angles in degrees, each an ``affine_grid`` rotation of the normalised
            coordinates (bilinear, reflection padding, corners not aligned).
        translations: (x, y) shifts in normalised coordinates ([-1, 1] spans the image), same
            sampling.
        hflip: add the horizontally mirrored image.
        grey_weights: RGB weights of the grey view (replicated to three channels), or None.
        quarter_turns: k of the rotations by k x 90 degrees counter-clockwise about the image
            centre (bilinear, reflection padding, corners aligned).
    """

    rotations: tuple[float, ...]
    translations: tuple[tuple[float, float], ...]
    hflip: bool
    grey_weights: tuple[float, float, float] | None
    quarter_turns: tuple[int, ...]

    @property
    def count(self) -> int:
        """Views per image, the image itself included."""
        extra = int(self.hflip) + int(self.grey_weights is not None)
        return 1 + len(self.rotations) + len(self.translations) + extra + len(self.quarter_turns)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """``count`` x 3 x H x W: the image, rotations, translations, flip, grey, quarter turns."""
        batch = image.unsqueeze(0)
        views = [batch]
        for degrees in self.rotations:
            cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
            views.append(_warp(batch, [[cos, -sin, 0.0], [sin, cos, 0.0]], align_corners=False))
        for x, y in self.translations:
            views.append(_warp(batch, [[1.0, 0.0, x], [0.0, 1.0, y]], align_corners=False))
        if self.hflip:
            views.append(batch.flip(-1))
        if self.grey_weights is not None:
            weights = torch.tensor(self.grey_weights, dtype=image.dtype).view(1, 3, 1, 1)
            views.append((batch * weights).sum(dim=1, keepdim=True).expand_as(batch))
        views += [_quarter_turn(batch, k) for k in self.quarter_turns]
        return torch.cat(views)


def _warp(batch: torch.Tensor, theta: list[list[float]], align_corners: bool) -> torch.Tensor:
    """Sample ``batch`` at ``theta`` applied to the output's normalised coordinates."""
    matrix = torch.tensor(theta, dtype=torch.float32).unsqueeze(0).expand(len(batch), 2, 3)
    grid = F.affine_grid(matrix, list(batch.shape), align_corners=align_corners)
    return F.grid_sample(
        batch.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=align_corners
    ).to(batch.dtype)


def _quarter_turn(batch: torch.Tensor, k: int) -> torch.Tensor:
    """Rotate by k x 90 degrees counter-clockwise about the centre (pixel units), same size.

    The output pixel at offset d from the centre samples the input at R(-k 90) d; in the
    normalised coordinates of aligned corners the offsets scale by (W - 1) / 2 and (H - 1) / 2.
    """
    cos, sin = ((1, 0), (0, 1), (-1, 0), (0, -1))[k % 4]
    half_w, half_h = (batch.shape[-1] - 1) / 2, (batch.shape[-2] - 1) / 2
    theta = [
        [cos, -sin * half_h / half_w, 0.0],
        [sin * half_w / half_h, cos, 0.0],
    ]
    return _warp(batch, theta, align_corners=True)


class ViewSet(Dataset[torch.Tensor]):
    """The few-shot training set: every view of every drawn image, each image's views shuffled.

    ``inputs`` are the drawn images as normalised network inputs, in category order; the
    views of each are permuted by one ``torch.randperm`` of a generator seeded with ``seed``,
    as the INP-Former code permutes each image's views. Items are fixed tensors.
    """

    def __init__(self, inputs: Sequence[torch.Tensor], views: FewShotViews, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        expanded = []
        for image in inputs:
            stack = views(image)
            expanded.append(stack[torch.randperm(len(stack), generator=generator)])
        self.views = torch.cat(expanded) if expanded else torch.empty(0)

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.views[index]
