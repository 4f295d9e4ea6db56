"""The reference set of a CPR model: training images and what is fitted on them once.

:func:`fit_reference_set` runs the frozen backbone over the training images twice: first to
draw random fine-scale features (k-means codebook; 2-means seeds and border/centre cells for
the foreground), then for every image's word histograms and foreground decision values. Only
the backbone is involved, so the set is fitted before training and never changes; the memory
bank of trained descriptors is built from its images afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from filterformer.errors import ConfigError
from filterformer.models.cpr.foreground import ForegroundMap, fit_lda, robust_range, seed_regions
from filterformer.models.cpr.retrieval import (
    block_histograms,
    fit_kmeans,
    nearest_centre,
    retrieve,
    trimmed_kl,
)
from filterformer.progress import progress_bar


@dataclass(frozen=True)
class RetrievalSettings:
    """Global retrieval and foreground settings (values: configs/model/cpr.yaml)."""

    num_words: int = 12
    codebook_samples: int = 50_000
    blocks: int = 5
    kept_blocks: int = 20
    top_k: int = 10
    foreground: bool = False
    foreground_samples: int = 15_000
    foreground_quantile: float = 0.01
    border_band: float = 3 / 80
    centre_half: float = 1 / 5
    fit_seed: int = 66


@dataclass
class ReferenceSet:
    """N normal images (normalised, N x 3 x H x W) and their fitted retrieval state."""

    images: torch.Tensor
    codebook: torch.Tensor  # V x C
    histograms: torch.Tensor  # N x blocks^2 x (V + 1)
    neighbours: torch.Tensor  # N x K: each image's nearest others (never itself)
    foreground: ForegroundMap | None = None
    foreground_maps: torch.Tensor | None = None  # N x h x w in [0, 1]

    def state(self) -> dict[str, torch.Tensor]:
        """Everything but the images, as named tensors (for a safetensors file)."""
        state = {
            "codebook": self.codebook,
            "histograms": self.histograms,
            "neighbours": self.neighbours,
        }
        if self.foreground is not None:
            state |= {f"foreground.{k}": v for k, v in self.foreground.state().items()}
            state["foreground_maps"] = self.foreground_maps
        return state

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], images: torch.Tensor) -> ReferenceSet:
        """Inverse of :meth:`state`, with the images."""
        foreground = None
        if "foreground.weight" in state:
            foreground = ForegroundMap(state["foreground.weight"], float(state["foreground.bias"]))
        return cls(
            images=images,
            codebook=state["codebook"],
            histograms=state["histograms"],
            neighbours=state["neighbours"].long(),
            foreground=foreground,
            foreground_maps=state.get("foreground_maps"),
        )


Prepare = Callable[[torch.Tensor], torch.Tensor]
"""What every image goes through before the backbone (the model's photometric normalisation)."""


def _fine_features(
    backbone: torch.nn.Module,
    images: torch.Tensor,
    batch_size: int,
    desc: str,
    progress: bool,
    prepare: Prepare | None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first index, B x C x h x w fine-scale features on the CPU) for batches of images."""
    device = next((p.device for p in backbone.parameters()), images.device)
    for start in progress_bar(range(0, len(images), batch_size), desc=desc, enabled=progress):
        batch = images[start : start + batch_size].to(device)
        batch = batch if prepare is None else prepare(batch)
        yield start, backbone(batch)[0].float().cpu()


def image_histograms(
    fine: torch.Tensor, codebook: torch.Tensor, settings: RetrievalSettings
) -> torch.Tensor:
    """B x C x h x w fine-scale features -> B x blocks^2 x (V + 1) block word histograms."""
    words = nearest_centre(fine, codebook)
    return block_histograms(words, settings.num_words, settings.blocks)


@torch.no_grad()
def recount_histograms(
    backbone: torch.nn.Module,
    references: ReferenceSet,
    settings: RetrievalSettings,
    *,
    batch_size: int = 8,
    prepare: Prepare | None = None,
) -> torch.Tensor:
    """The block histograms of the reference images, counted again with their codebook."""
    passes = _fine_features(backbone, references.images, batch_size, "histograms", False, prepare)
    return torch.cat([image_histograms(fine, references.codebook, settings) for _, fine in passes])


@torch.no_grad()
def fit_reference_set(
    backbone: torch.nn.Module,
    images: torch.Tensor,
    settings: RetrievalSettings,
    *,
    batch_size: int = 8,
    progress: bool = False,
    prepare: Prepare | None = None,
) -> ReferenceSet:
    """Fit codebook, histograms, neighbours and (if enabled) the foreground on ``images``
    (each batch through ``prepare`` before the backbone, if given)."""
    count = len(images)
    if count <= settings.top_k:
        raise ConfigError(
            f"global retrieval keeps the top {settings.top_k} of the other training images, but "
            f"there are only {count} training images; lower model.top_k below {count}"
        )
    generator = torch.Generator().manual_seed(settings.fit_seed)
    samples, seeds = _first_pass(
        backbone, images, settings, generator, batch_size, progress, prepare
    )
    codebook = fit_kmeans(samples, settings.num_words, settings.fit_seed)
    lda = None if seeds is None else _fit_lda(samples, *seeds, settings, generator)
    histograms, decisions = [], []
    for _, fine in _fine_features(backbone, images, batch_size, "histograms", progress, prepare):
        histograms.append(image_histograms(fine, codebook, settings))
        if lda is not None:
            decisions.append(torch.einsum("bchw,c->bhw", fine, lda[0]) + lda[1])
    histograms = torch.cat(histograms)
    distances = trimmed_kl(histograms, histograms, settings.kept_blocks)
    neighbours = retrieve(distances, settings.top_k, exclude=torch.arange(count))
    references = ReferenceSet(images, codebook, histograms, neighbours)
    if lda is not None:
        values = torch.cat(decisions)
        lo, hi = robust_range(values, settings.foreground_quantile)
        references.foreground = ForegroundMap.from_lda(lda[0], lda[1], lo, hi)
        references.foreground_maps = ((values - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
    return references


def _first_pass(
    backbone: torch.nn.Module,
    images: torch.Tensor,
    settings: RetrievalSettings,
    generator: torch.Generator,
    batch_size: int,
    progress: bool,
    prepare: Prepare | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Random pixel features (M x C) and, for the foreground, all border and centre cells."""
    samples, border_cells, centre_cells = [], [], []
    chosen = regions = None
    passes = _fine_features(backbone, images, batch_size, "sampling features", progress, prepare)
    for start, fine in passes:
        _, channels, height, width = fine.shape
        if chosen is None:
            total = len(images) * height * width
            chosen = torch.randperm(total, generator=generator)[: settings.codebook_samples]
            regions = seed_regions(height, width, settings.border_band, settings.centre_half)
        flat = fine.permute(0, 2, 3, 1).reshape(-1, channels)
        offset = start * height * width
        mine = chosen[(chosen >= offset) & (chosen < offset + len(flat))] - offset
        samples.append(flat[mine])
        if settings.foreground:
            border_cells.append(fine.permute(0, 2, 3, 1)[:, regions[0]].reshape(-1, channels))
            centre_cells.append(fine.permute(0, 2, 3, 1)[:, regions[1]].reshape(-1, channels))
    seeds = (torch.cat(border_cells), torch.cat(centre_cells)) if settings.foreground else None
    return torch.cat(samples), seeds


def _fit_lda(
    samples: torch.Tensor,
    border: torch.Tensor,
    centre: torch.Tensor,
    settings: RetrievalSettings,
    generator: torch.Generator,
) -> tuple[torch.Tensor, float]:
    """LDA (w, b) between background border cells and foreground centre cells.

    2-means on the random samples; the background word is the one most frequent in the
    border band; a balanced random draw of at most ``foreground_samples`` per class.
    """
    centres = fit_kmeans(samples, 2, settings.fit_seed)

    def words(cells: torch.Tensor) -> torch.Tensor:
        return nearest_centre(cells.T[None, :, :, None], centres).flatten()

    border_words = words(border)
    background_word = int(border_words.bincount(minlength=2).argmax())
    background = border[border_words == background_word]
    foreground = centre[words(centre) != background_word]
    draw = min(settings.foreground_samples, len(background), len(foreground))
    if draw < 2:
        raise ConfigError(
            "foreground estimation found no foreground: the centre of the training images looks "
            "like their border. Turn it off for this category (category.cpr.foreground=false)."
        )

    def pick(cells: torch.Tensor) -> torch.Tensor:
        return cells[torch.randperm(len(cells), generator=generator)[:draw]]

    return fit_lda(pick(foreground), pick(background))
