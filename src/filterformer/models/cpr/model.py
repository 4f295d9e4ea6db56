"""CPR (Contrastive Patch Retrieval; Li et al., "Target before Shooting: Accurate Anomaly
Detection and Localization under One Millisecond via Cascade Patch Retrieval", IEEE TIP 2024,
arXiv 2308.06748) behind the interface of INP-Former.

- ``forward(pairs)`` gives the training losses of a batch of packed training pairs
  (:func:`pack_pair`: pseudo-defect image, retrieved normal reference, mask, sampling weight);
- ``anomaly_maps(images)`` gives ``{"cpr": B x H x W}``: global retrieval of the K most
  similar training images, windowed minimum cosine distance of the trained descriptors to
  theirs (both scales, summed), weighted by the foreground when it is estimated (the max of
  the image's and its K references' foreground maps, each resized to the input first, as
  the CPR code's test.py; ``foreground_max_at="grid"``: ours, the max on the feature grid);
- ``fit_references(images)`` must run once on the training images before either (it fits the
  codebook, histograms, neighbours and foreground with the frozen backbone alone).

Only the retrieval heads are trained; the bank of reference descriptors is rebuilt from the
reference images whenever the heads may have changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields

import torch
import torch.nn.functional as F
from torch import nn

from filterformer.errors import ConfigError
from filterformer.models.base import FrozenEncoderModel
from filterformer.models.cpr.backbones import as_scales
from filterformer.models.cpr.heads import RetrievalHead
from filterformer.models.cpr.local import MemoryBank
from filterformer.models.cpr.loss import (
    SAMPLINGS,
    PointPairs,
    point_pair_loss,
    sample_at,
    sample_points,
    spatial_weights,
)
from filterformer.models.cpr.photometric import PHOTOMETRIC, photometric_normalise
from filterformer.models.cpr.references import (
    ReferenceSet,
    RetrievalSettings,
    fit_reference_set,
    image_histograms,
)
from filterformer.models.cpr.retrieval import retrieve, trimmed_kl

PAIR_CHANNELS = 8
"""Channels of a packed training pair: image (3), reference (3), mask (1), weight (1)."""
FOREGROUND_MAX_AT = ("input", "grid")
"""Where the foreground maps of an image and its references meet: CPR code's, ours."""


def pack_pair(
    image: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """3 x H x W image and reference, H x W mask and positive-sampling weight -> 8 x H x W."""
    return torch.cat([image, reference, mask[None].float(), weight[None].float()])


def unpack_pairs(
    batch: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """B x 8 x H x W -> images, references (B x 3 x H x W), masks (bool), weights (B x H x W)."""
    if batch.ndim != 4 or batch.shape[1] != PAIR_CHANNELS:
        raise ConfigError(
            f"CPR trains on packed pairs (B x {PAIR_CHANNELS} x H x W), got {tuple(batch.shape)}; "
            "train it through ff-train, which builds them"
        )
    return batch[:, :3], batch[:, 3:6], batch[:, 6] > 0.5, batch[:, 7]


class CPR(FrozenEncoderModel):
    """CPR on a frozen two-scale backbone (DenseNet or the run's DINOv2 encoder).

    Args (values and sources: configs/model/cpr.yaml):
        encoder: DenseNetFeatures, or a DinoEncoder with exactly two taps.
        out_dim / inner_dim / inception_dim: retrieval head widths.
        windows: local search window per scale (odd).
        points: point pairs per kind and sample; pos_margin / neg_margin / exponent: loss.
        spatial_negatives: add spatial negatives (object categories).
        loss_sampling: ``corners`` (CPR code: raw head outputs at p / (S - 1)) or ``centres``
            (ours: unit descriptors at pixel centres); :mod:`filterformer.models.cpr.loss`.
        foreground_max_at: ``input`` (CPR code: foreground maps resized, then their max) or
            ``grid`` (ours: max on the feature grid, then resized).
        photometric / photometric_sigma: ours, the normalisation of every image before the
            backbone (:mod:`filterformer.models.cpr.photometric`; ``none``: CPR's).
        bank_device: where the float16 bank lives (None: with the heads).
        bank_chunk: test images scored together against their references.
        Remaining keywords: :class:`RetrievalSettings` (codebook, blocks, top_k, foreground).
    """

    fusion_modes: tuple[str, ...] = ("cpr",)
    keyword_settings: tuple[str, ...] = tuple(f.name for f in fields(RetrievalSettings))
    """The keywords that ``**retrieval`` accepts (for the config check of build_model)."""

    def __init__(
        self,
        encoder: nn.Module,
        out_dim: int = 384,
        inner_dim: int = 192,
        inception_dim: int = 256,
        windows: Sequence[int] = (3, 1),
        points: int = 300,
        pos_margin: float = 0.8,
        neg_margin: float = -0.2,
        exponent: float = 3.0,
        spatial_negatives: bool = False,
        loss_sampling: str = "corners",
        foreground_max_at: str = "input",
        photometric: str = "none",
        photometric_sigma: float = 0.125,
        bank_device: str | None = None,
        bank_chunk: int = 4,
        fit_batch_size: int = 8,
        **retrieval: object,
    ) -> None:
        super().__init__()
        self.encoder = as_scales(encoder)
        self.windows = tuple(int(w) for w in windows)
        if len(self.windows) != 2 or any(w < 1 or w % 2 == 0 for w in self.windows):
            raise ConfigError(f"model.windows {list(windows)} must be two positive odd numbers")
        _check_choice("model.loss_sampling", loss_sampling, SAMPLINGS)
        _check_choice("model.foreground_max_at", foreground_max_at, FOREGROUND_MAX_AT)
        _check_choice("model.photometric", photometric, PHOTOMETRIC)
        self.loss_sampling, self.foreground_max_at = loss_sampling, foreground_max_at
        self.photometric, self.photometric_sigma = photometric, photometric_sigma
        self.settings = RetrievalSettings(**retrieval)
        self.heads = nn.ModuleList(
            RetrievalHead(c, out_dim, inner_dim, inception_dim) for c in self.encoder.channels
        )
        self.out_dim, self.points, self.exponent = out_dim, points, exponent
        self.margins = (pos_margin, neg_margin)
        self.spatial_negatives = spatial_negatives
        # Farther than the fine scale's search window reaches (its half-diagonal in pixels).
        self.min_distance = self.encoder.strides[0] * (self.windows[0] // 2) * math.sqrt(2)
        self.bank_device, self.bank_chunk = bank_device, bank_chunk
        self.fit_batch_size = fit_batch_size
        self.references: ReferenceSet | None = None
        self._bank: MemoryBank | None = None
        self.register_load_state_dict_post_hook(lambda module, _: module.drop_bank())

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """One part: the retrieval heads."""
        return {"heads": self.trainable_parameters()}

    def train(self, mode: bool = True) -> CPR:
        """Training changes the heads, so the bank is dropped when training starts."""
        if mode:
            self.drop_bank()
        return super().train(mode)

    def drop_bank(self) -> None:
        """Forget the bank of reference descriptors (rebuilt on the next anomaly map)."""
        self._bank = None

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised B x 3 x H x W images as the backbone sees them (photometric option)."""
        return photometric_normalise(images, self.photometric, self.photometric_sigma)

    def backbone(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Both backbone scales of B x 3 x H x W normalised images."""
        return self.encoder(self.prepare(images))

    def head_outputs(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone scales -> raw head outputs (B x out_dim x h x w) per scale."""
        return [head(f) for head, f in zip(self.heads, features, strict=True)]

    def descriptors(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone scales -> unit descriptors (B x out_dim x h x w) per scale."""
        return [F.normalize(out, dim=1) for out in self.head_outputs(features)]

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training losses of B x 8 x H x W packed pairs: "loss" = "pos" + "neg" over scales."""
        self.drop_bank()
        images, references, masks, weights = unpack_pairs(batch)
        size = batch.shape[0]
        features = self.backbone(torch.cat([images, references]))
        outputs = self.head_outputs(features)
        points = sample_points(
            masks, weights, self.points, self.min_distance, self.spatial_negatives
        ).on_grid(tuple(masks.shape[-2:]), self.loss_sampling)
        pos = neg = batch.new_zeros(())
        for feats, out in zip(features, outputs, strict=True):
            desc = out if self.loss_sampling == "corners" else F.normalize(out, dim=1)
            cos_pos = _cosines(desc[:size], desc[size:], points.positives)
            negatives = (points.anomalies, points.spatial)
            cos_neg = torch.cat([_cosines(desc[:size], desc[size:], p) for p in negatives], 1)
            w_spatial = spatial_weights(feats[:size], feats[size:], points.spatial)
            w_neg = torch.cat([points.anomalies.valid, w_spatial], 1)
            scale_pos, scale_neg = point_pair_loss(
                cos_pos, points.positives.valid, cos_neg, w_neg, *self.margins, self.exponent
            )
            pos, neg = pos + scale_pos, neg + scale_neg
        return {"loss": pos + neg, "pos": pos, "neg": neg}

    @torch.no_grad()
    def fit_references(self, images: torch.Tensor, progress: bool = False) -> ReferenceSet:
        """Fit global retrieval (and foreground) on N x 3 x H x W normalised training images."""
        references = fit_reference_set(
            self.encoder,
            images,
            self.settings,
            batch_size=self.fit_batch_size,
            progress=progress,
            prepare=self.prepare,
        )
        self.set_references(references)
        return references

    def set_references(self, references: ReferenceSet) -> None:
        """Use ``references`` (fitted, or loaded from a run) from now on."""
        if references.foreground is None and self.settings.foreground:
            raise ConfigError("the reference set has no foreground, but model.foreground is on")
        self.references = references
        self.drop_bank()

    def memory_bank(self) -> MemoryBank:
        """The float16 descriptors of every reference image (built now if needed)."""
        if self._bank is not None:
            return self._bank
        references = self._require_references()
        device = next(self.heads.parameters()).device
        training = self.training
        self.eval()
        scales: list[list[torch.Tensor]] = [[], []]
        with torch.no_grad():
            for start in range(0, len(references.images), self.fit_batch_size):
                batch = references.images[start : start + self.fit_batch_size].to(device)
                for store, desc in zip(scales, self.descriptors(self.backbone(batch)), strict=True):
                    store.append(desc.to(self.bank_device or device, torch.float16))
        super().train(training)
        self._bank = MemoryBank([torch.cat(s) for s in scales])
        return self._bank

    def _require_references(self) -> ReferenceSet:
        if self.references is None:
            raise ConfigError(
                "CPR has no reference set: call fit_references(training images) first, or load "
                "the run folder with filterformer.runs.load_run (it reads references.safetensors)"
            )
        return self.references

    def retrieve(self, fine: torch.Tensor) -> torch.Tensor:
        """B x C x h x w fine-scale features -> B x K indices of the nearest references."""
        references = self._require_references()
        histograms = image_histograms(fine, references.codebook, self.settings)
        distances = trimmed_kl(histograms.cpu(), references.histograms, self.settings.kept_blocks)
        return retrieve(distances, self.settings.top_k)

    @torch.no_grad()
    def anomaly_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"cpr": B x H x W} anomaly maps at the input resolution."""
        features = self.backbone(images)
        neighbours = self.retrieve(features[0])
        distances = self.memory_bank().distances(
            self.descriptors(features), neighbours, self.windows, self.bank_chunk
        )
        own = theirs = None
        references = self.references
        if references.foreground is not None:
            own = references.foreground(features[0])
            theirs = references.foreground_maps[neighbours].to(own.device)
        return {"cpr": self.combine(distances, images.shape[-2:], own, theirs)}

    def combine(
        self,
        distances: Sequence[torch.Tensor],
        size: Sequence[int],
        own: torch.Tensor | None = None,
        theirs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The B x H x W map of ``size`` from the windowed distances of each scale (B x h x w).

        The scales are summed on the fine grid and resized; with the foreground, the map is
        weighted by :func:`foreground_weight` of the image's own map (``own``, B x h x w) and
        its K references' (``theirs``, B x K x h x w).
        """
        grid = distances[0].shape[-2:]
        amap = _resize(sum(_resize(d, grid) for d in distances), size)
        if own is None:
            return amap
        return amap * foreground_weight(own, theirs, size, self.foreground_max_at)


def foreground_weight(
    own: torch.Tensor, theirs: torch.Tensor, size: Sequence[int], max_at: str = "input"
) -> torch.Tensor:
    """B x H x W foreground weight from an image's B x h x w map and its references' B x K x
    h x w maps: their pixelwise max, taken after (``input``) or before (``grid``) the
    bilinear resize to ``size``."""
    stacked = torch.cat([own[:, None], theirs], 1)
    if max_at == "grid":
        return _resize(stacked.amax(1), size)
    batch, maps = stacked.shape[:2]
    return _resize(stacked.flatten(0, 1), size).unflatten(0, (batch, maps)).amax(1)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} {value!r} is unknown; choose one of {', '.join(choices)}")


def _cosines(query: torch.Tensor, reference: torch.Tensor, pairs: PointPairs) -> torch.Tensor:
    """B x P cosines between the descriptors of x and r at the paired points."""
    return F.cosine_similarity(
        sample_at(query, pairs.query), sample_at(reference, pairs.reference), dim=1
    )


def _resize(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """B x h x w -> B x H x W, bilinear (align_corners=False)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[
        :, 0
    ]
