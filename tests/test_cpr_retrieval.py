"""CPR's global retrieval and foreground estimation, checked against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from torch import nn

from filterformer.errors import ConfigError
from filterformer.models.cpr.foreground import ForegroundMap, fit_lda, robust_range, seed_regions
from filterformer.models.cpr.references import RetrievalSettings, fit_reference_set
from filterformer.models.cpr.retrieval import block_histograms, retrieve, trimmed_kl


class ColourBackbone(nn.Module):
    """The image itself as both scales: retrieval then works on pixel colours."""

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [images, images]


def layouts(count: int, size: int = 40, seed: int = 0) -> torch.Tensor:
    """``count`` images of random coloured rectangles on random backgrounds (N x 3 x s x s)."""
    rng = np.random.default_rng(seed)
    palette = rng.uniform(0, 1, (12, 3))
    images = np.empty((count, 3, size, size), dtype=np.float32)
    for image in images:
        image[:] = palette[rng.integers(12)][:, None, None]
        for _ in range(6):
            y, x = rng.integers(0, size - 8, 2)
            h, w = rng.integers(6, 20, 2)
            image[:, y : y + h, x : x + w] = palette[rng.integers(12)][:, None, None]
    return torch.from_numpy(images)


SMALL = RetrievalSettings(codebook_samples=4000, top_k=3)


def test_own_augmented_copies_rank_first() -> None:
    images = layouts(10)
    refs = fit_reference_set(ColourBackbone(), images, SMALL)
    noise = torch.Generator().manual_seed(1)
    for j in range(len(images)):
        copy = images[j] * 1.03 + 0.01 * torch.randn(images[j].shape, generator=noise)
        words = torch.cdist(copy.flatten(1).T, refs.codebook).argmin(1).reshape(1, 40, 40)
        distances = trimmed_kl(block_histograms(words, 12, 5), refs.histograms, 20)
        assert retrieve(distances, 3)[0, 0] == j


def test_an_image_never_retrieves_itself() -> None:
    images = layouts(8)
    images = torch.cat([images, images[2:3]])  # image 8 duplicates image 2
    refs = fit_reference_set(ColourBackbone(), images, SMALL)
    for i, row in enumerate(refs.neighbours.tolist()):
        assert i not in row and len(set(row)) == 3
    assert refs.neighbours[2, 0] == 8 and refs.neighbours[8, 0] == 2  # its twin comes first


def _block(words: torch.Tensor, index: int, side: int = 8) -> tuple[slice, slice]:
    """Rows and columns of block ``index`` of the 5 x 5 grid over a 40 x 40 word map."""
    y, x = divmod(index, 5)
    return slice(y * side, (y + 1) * side), slice(x * side, (x + 1) * side)


def test_one_corrupted_block_does_not_change_the_ranking() -> None:
    """Trimmed KL (20 smallest of 25 blocks) ignores a defect's block; the full sum does not."""
    rng = np.random.default_rng(3)
    base = torch.from_numpy(rng.integers(0, 6, (40, 40)))
    corrupted_block = 12
    refs = [base]
    for changed in (7, 10, 14):  # other layouts: 7, 10, 14 blocks of unrelated words
        other = base.clone()
        for b in rng.choice([i for i in range(25) if i != corrupted_block], changed, False):
            other[_block(other, int(b))] = torch.from_numpy(rng.integers(6, 9, (8, 8)))
        refs.append(other)
    close = base.clone()  # the defect's words at the corrupted block, 6 barely changed blocks
    close[_block(close, corrupted_block)] = 11
    for b in (0, 4, 6, 18, 20, 24):  # one pixel moves from word 0 to word 1
        ys, xs = _block(close, b)
        y, x = torch.nonzero(close[ys, xs] == 0)[0].tolist()
        close[ys.start + y, xs.start + x] = 1
    refs.append(close)
    references = block_histograms(torch.stack(refs), 12, 5)
    query = base.clone()
    query[_block(query, corrupted_block)] = 11
    clean, defective = (block_histograms(q[None], 12, 5) for q in (base, query))
    ranking = retrieve(trimmed_kl(clean, references, 20), 5)
    assert ranking[0].tolist() == [0, 4, 1, 2, 3]
    assert torch.equal(retrieve(trimmed_kl(defective, references, 20), 5), ranking)
    assert retrieve(trimmed_kl(defective, references, 25), 1)[0, 0] == 4  # untrimmed: fooled


def test_retrieve_refuses_more_than_available() -> None:
    with pytest.raises(ValueError, match="cannot retrieve 3"):
        retrieve(torch.zeros(1, 3), 3, exclude=torch.tensor([0]))
    with pytest.raises(ConfigError, match="top 10"):
        fit_reference_set(ColourBackbone(), layouts(10), RetrievalSettings(codebook_samples=100))


def test_seed_regions_on_cpr_grid() -> None:
    border, centre = seed_regions(80, 80)  # CPR: 3-cell band, centre 40 +- 16
    assert border.sum() == 80 * 80 - 74 * 74
    assert not border[3:77, 3:77].any() and border[:3].all() and border[:, 77:].all()
    assert centre.sum() == 32 * 32 and centre[24:56, 24:56].all()


def test_foreground_conv_equals_sklearn_lda_mapped_by_the_robust_range() -> None:
    rng = np.random.default_rng(0)
    mixing = rng.normal(0, 1, (16, 16))
    fg = rng.normal(0, 1, (500, 16)) @ mixing + 1.0
    bg = rng.normal(0, 1, (400, 16)) @ mixing * 0.7 - 0.5
    pixels = rng.normal(0, 1.5, (2, 16, 30, 30)).astype(np.float32)  # "all training pixels"
    lda = LinearDiscriminantAnalysis().fit(np.vstack([fg, bg]), [1] * 500 + [0] * 400)
    values = lda.decision_function(pixels.transpose(0, 2, 3, 1).reshape(-1, 16))
    q_lo, q_hi = np.quantile(values, [0.01, 0.99])
    kept = values[(values >= q_lo) & (values <= q_hi)]
    lo, hi = kept.min(), kept.max()
    expected = np.clip((values - lo) / (hi - lo), 0, 1).reshape(2, 30, 30)

    w, b = fit_lda(torch.from_numpy(fg), torch.from_numpy(bg))
    features = torch.from_numpy(pixels)
    ours_lo, ours_hi = robust_range(torch.einsum("bchw,c->bhw", features, w) + b)
    foreground = ForegroundMap.from_lda(w, b, ours_lo, ours_hi)(features)
    assert np.allclose(foreground.numpy(), expected, atol=2e-5)
    assert 0.0 < expected.mean() < 1.0  # the clamp bites on both sides of the range


def test_foreground_on_objects_of_a_reference_set() -> None:
    """Bright squares on a dark background: the object's pixels get the high probabilities."""
    rng = np.random.default_rng(1)
    images = torch.full((12, 3, 40, 40), 0.1) + 0.02 * torch.from_numpy(
        rng.normal(0, 1, (12, 3, 40, 40)).astype(np.float32)
    )
    images[:, :, 10:30, 12:30] += torch.tensor([0.7, 0.5, 0.2])[:, None, None]
    refs = fit_reference_set(
        ColourBackbone(), images, RetrievalSettings(codebook_samples=4000, top_k=3, foreground=True)
    )
    maps = refs.foreground_maps
    assert maps.shape == (12, 40, 40) and maps.min() >= 0 and maps.max() <= 1
    assert maps[:, 12:28, 14:28].mean() > 0.9 and maps[:, :6].mean() < 0.1
    assert torch.allclose(refs.foreground(images), maps, atol=1e-5)
