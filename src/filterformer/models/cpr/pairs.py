"""CPR's training items: a pseudo-defect image and a retrieved normal reference, packed.

Item ``index`` of epoch ``e`` is made from training image ``index mod N`` (an endless stream
over the training images, as CPR's infinite sampler): a pseudo-defect drawn for step
``e * len + index``, one of the image's K global neighbours as the reference, optionally a
lighting change of each (ours, :class:`PairRelight`: the engine of the mixed pseudo split,
drawn independently for the two images), CPR's noise on both (salt-and-pepper and lightness,
each with probability 0.3), and the map that positives are sampled from (the blurred,
sharpened foreground of both images; uniform without foreground). Everything is a function
of (seed, epoch, index), so a resumed run sees the same items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from filterformer.data.pseudo_defects import PseudoDefects
from filterformer.data.pseudo_split import relight
from filterformer.data.transforms import InputGeometry
from filterformer.models.cpr.model import pack_pair


@dataclass(frozen=True)
class PairNoise:
    """CPR's photometric noise on both images of a pair (official code's training transform)."""

    probability: float = 0.3
    salt_pepper: float = 0.03
    """Largest fraction of pixels set to white or black (half each)."""
    lightness: float = 0.1
    """Largest relative change of the HLS lightness."""

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """H x W x 3 uint8 -> the same with noise (a copy where anything changed)."""
        if rng.random() < self.probability:
            image = image.copy()
            hit = rng.random(image.shape[:2]) < rng.uniform(0, self.salt_pepper)
            white = rng.random(image.shape[:2]) < 0.5
            image[hit & white], image[hit & ~white] = 255, 0
        if rng.random() < self.probability:
            hls = cv2.cvtColor(image, cv2.COLOR_RGB2HLS).astype(np.float32)
            hls[:, :, 1] *= 1 + rng.uniform(-self.lightness, self.lightness)
            hls = np.clip(np.rint(hls), 0, 255).astype(np.uint8)
            image = cv2.cvtColor(hls, cv2.COLOR_HLS2RGB)
        return image


@dataclass(frozen=True)
class PairRelight:
    """Ours: a random lighting change of each image of a pair, independently, before the
    noise (:func:`filterformer.data.pseudo_split.relight`, the mixed pseudo split's engine)."""

    probability: float = 0.0
    """Chance that an image is relit (0: never, CPR's own training)."""
    strength: float = 1.0
    """Scale of the lighting amplitudes (1: those of the mixed pseudo split)."""

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """H x W x 3 uint8 -> the same, relit with ``probability`` (draws nothing when off)."""
        if self.probability <= 0 or self.strength <= 0 or rng.random() >= self.probability:
            return image
        return relight(image, rng, self.strength)


WEIGHT_BORDERS = ("reflect", "reflect101")
"""Borders of the sampling map's blur: CPR code's (scipy's reflect), ours (OpenCV's default)."""


def sampling_weight(
    foreground: np.ndarray, size: tuple[int, int], border: str = "reflect"
) -> np.ndarray:
    """CPR's positive-sampling map from an h x w foreground: Gaussian blur (sigma = h / 25),
    sharpened by 1 / (1 + exp(5 - 10 x)), resized (bilinear) to ``size`` (H, W), float32.

    ``border``: ``reflect`` as the CPR code (dataset/base.py: scipy.ndimage.gaussian_filter,
    edge repeated, d c b a | a b c d; kernel radius int(4 sigma + 0.5)), or ``reflect101``
    (ours: OpenCV's GaussianBlur, edge not repeated, d c b | a b c d).
    """
    sigma = foreground.shape[0] / 25
    if border == "reflect":
        blurred = ndimage.gaussian_filter(foreground.astype(np.float64), sigma, mode="reflect")
    elif border == "reflect101":
        blurred = cv2.GaussianBlur(foreground.astype(np.float32), (0, 0), sigma)
    else:
        raise ValueError(f"border {border!r}: choose one of {', '.join(WEIGHT_BORDERS)}")
    sharpened = 1 / (1 + np.exp(5 - 10 * blurred))
    resized = cv2.resize(sharpened, size[::-1], interpolation=cv2.INTER_LINEAR)
    return resized.astype(np.float32)


class RetrievalPairs(Dataset[torch.Tensor]):
    """Packed CPR training pairs (:func:`filterformer.models.cpr.pack_pair`), 8 x H x W each.

    Args:
        images: the N training images, H x W x 3 uint8 at the network input size.
        neighbours: N x K indices of each image's global neighbours (never itself).
        geometry: normalises the images as every network input is.
        defects: the pseudo-defect generator.
        foreground: N x h x w foreground maps in [0, 1] (object categories), else None.
        length: items per epoch (steps per epoch x batch size).
        seed: the run's seed.
        noise: photometric noise of both images.
        relight: lighting change of each image (ours; off by default).
        weight_border: border of the sampling map's blur (:func:`sampling_weight`).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        neighbours: np.ndarray,
        geometry: InputGeometry,
        defects: PseudoDefects,
        *,
        foreground: np.ndarray | None,
        length: int,
        seed: int,
        noise: PairNoise | None = None,
        relight: PairRelight | None = None,
        weight_border: str = "reflect",
    ) -> None:
        self.images = list(images)
        self.neighbours = np.asarray(neighbours)
        self.geometry = geometry
        self.defects = defects
        self.length, self.seed = length, seed
        self.noise = noise or PairNoise()
        self.relight = relight or PairRelight()
        self.epoch = 0
        size = self.images[0].shape[:2]
        self._foreground = self._weights = None
        if foreground is not None:
            self._foreground = [cv2.resize(f, size[::-1]) for f in foreground.astype(np.float32)]
            self._weights = [sampling_weight(f, size, weight_border) for f in foreground]

    def set_epoch(self, epoch: int) -> None:
        """Select the items of ``epoch``; call every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        step = self.epoch * self.length + index
        rng = np.random.default_rng([self.seed, step, 1])  # the defect uses [seed, step]
        source = index % len(self.images)
        reference = int(self.neighbours[source][rng.integers(self.neighbours.shape[1])])
        own_fg = None if self._foreground is None else self._foreground[source]
        image, mask = self.defects(self.images[source], self.seed, step, foreground=own_fg)
        image = self.noise(self.relight(image, rng), rng)
        ref_image = self.noise(self.relight(self.images[reference], rng), rng)
        if self._weights is None:
            weight = np.ones(mask.shape, dtype=np.float32)
        else:
            weight = np.maximum(self._weights[source], self._weights[reference])
        return pack_pair(
            self.geometry.normalize(image),
            self.geometry.normalize(ref_image),
            torch.from_numpy(mask),
            torch.from_numpy(weight),
        )
