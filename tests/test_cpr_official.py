"""CPR as its official code computes it (github flyinghu123/CPR @36db567): each part that the
library once did differently, checked against values computed the code's way, written out
here from the code's definitions (test.py, train.py, dataset/base.py, models/grb.py)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from filterformer.data.transforms import InputGeometry
from filterformer.errors import ConfigError
from filterformer.evaluation.image_metrics import ImageScores
from filterformer.evaluation.protocol import image_score, resolve_image_score
from filterformer.inference.predict import Smoothing, smooth_maps
from filterformer.models.cpr import CPR, pack_pair
from filterformer.models.cpr.loss import sample_points
from filterformer.models.cpr.model import foreground_weight
from filterformer.models.cpr.pairs import sampling_weight
from filterformer.models.cpr.retrieval import block_histograms, nearest_centre
from filterformer.models.cpr.run_files import (
    REFERENCES_FILE,
    load_references,
    normalised,
    save_references,
)
from filterformer.models.registry import build_encoder, build_model
from filterformer.runs.compose import compose_config
from filterformer.runs.run import image_score_rule


def tiny_cpr(**settings: object) -> CPR:
    torch.manual_seed(0)
    defaults = dict(
        top_k=3, codebook_samples=2000, points=40, out_dim=32, inner_dim=16, inception_dim=16
    )
    return build_model("cpr", build_encoder("tiny_densenet"), **(defaults | settings))


def object_images(count: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Normalised images of a bright noisy object on a dark noisy field."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, *size, generator=generator) * 0.3 - 1.0
    height, width = size
    images[:, :, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] += 2.0
    return images


def compose_train(*overrides: str):
    return compose_config(overrides)


# 1. Foreground weight -----------------------------------------------------------------------


def official_foreground_weight(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """test.py: every foreground map (own, then the K references') cv.resize-d to the input
    as float64, then their max."""
    resized = [cv2.resize(m.astype(float), size[::-1]) for m in maps]
    return np.max(np.stack(resized), axis=0)


def test_foreground_weight_is_the_max_of_the_resized_maps() -> None:
    rng = np.random.default_rng(0)
    own, theirs = rng.random((2, 10, 12)), rng.random((2, 4, 10, 12))
    size = (40, 48)
    ours = foreground_weight(torch.from_numpy(own), torch.from_numpy(theirs), size)
    for b in range(2):
        expected = official_foreground_weight(np.concatenate([own[b : b + 1], theirs[b]]), size)
        assert np.abs(ours[b].numpy() - expected).max() < 1e-9
    grid = foreground_weight(torch.from_numpy(own), torch.from_numpy(theirs), size, "grid")
    assert (grid - ours).abs().max() > 0.05  # ours: the max first; a named option only


def test_the_model_weights_its_map_with_the_official_foreground() -> None:
    model = tiny_cpr(foreground=True)
    assert model.foreground_max_at == "input"
    images = object_images(8, (48, 56))
    references = model.fit_references(images)
    model.eval()
    query = images[:2] + 0.1 * torch.randn(2, 3, 48, 56, generator=torch.Generator())
    weighted = model.anomaly_maps(query)["cpr"]
    fine = model.backbone(query)[0]
    neighbours = model.retrieve(fine).numpy()
    own = references.foreground(fine).numpy()
    estimator, references.foreground = references.foreground, None
    raw = model.anomaly_maps(query)["cpr"].numpy()
    references.foreground = estimator
    stored = references.foreground_maps.numpy()
    for b in range(2):
        maps = np.concatenate([own[b : b + 1], stored[neighbours[b]]])
        expected = raw[b] * official_foreground_weight(maps, (48, 56))
        assert np.abs(weighted[b].numpy() - expected).max() < 1e-5


# 2. Training loss wiring --------------------------------------------------------------------


def official_loss(model: CPR, batch: torch.Tensor, points, centres: bool = False) -> float:
    """train.py's train_one_step with dataset/base.py's points: raw head outputs sampled at
    p / (S - 1) * 2 - 1 (grid_sample, align_corners=False), cosines, hinges cubed; spatial
    negatives weighted by the squared backbone-feature gap, rescaled to average 1.
    ``centres``: the library's earlier reading instead (unit descriptors, (p + 0.5) / S)."""
    size = batch.shape[0]
    height, width = batch.shape[-2:]
    features = model.encoder(torch.cat([batch[:, :3], batch[:, 3:6]]))

    def grid(xy: torch.Tensor) -> torch.Tensor:
        if centres:
            return (xy + 0.5) / torch.tensor([width, height]) * 2 - 1
        return xy / torch.tensor([width - 1, height - 1]) * 2 - 1

    def sample(f: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(f, grid(xy)[:, :, None], align_corners=False)[:, :, :, 0]

    total = 0.0
    for ori, head in zip(features, model.heads, strict=True):
        out = head(ori)
        out = F.normalize(out, dim=1) if centres else out
        query, ref, ori_q, ori_r = out[:size], out[size:], ori[:size], ori[size:]
        p, a, n = points.positives, points.anomalies, points.spatial
        gap = (sample(ori_q, n.query) - sample(ori_r, n.reference)).square().sum(1)
        w_n = gap * (n.valid > 0)
        w_n = w_n / (w_n.sum(1, keepdim=True) + 1e-7) * n.valid.sum(1, keepdim=True)
        cos_p = F.cosine_similarity(sample(query, p.query), sample(ref, p.reference))
        pos = ((0.8 - cos_p).clamp(min=0) * p.valid).pow(3).sum() / max(1, (p.valid > 0).sum())
        cos_n = torch.cat(
            [
                F.cosine_similarity(sample(query, n.query), sample(ref, n.reference)),
                F.cosine_similarity(sample(query, a.query), sample(ref, a.reference)),
            ],
            1,
        )
        w = torch.cat([w_n, a.valid], 1)
        neg = ((cos_n + 0.2).clamp(min=0) * w).pow(3).sum() / max(1, (w > 0).sum())
        total += float(pos + neg)
    return total


@pytest.mark.parametrize("sampling", ["corners", "centres"])
def test_the_loss_reads_the_points_as_the_official_code(sampling: str) -> None:
    model = tiny_cpr(spatial_negatives=True, loss_sampling=sampling).eval()
    images = object_images(4, (48, 56))
    mask = torch.zeros(48, 56)
    mask[10:20, 12:30] = 1
    weight = torch.rand(48, 56, generator=torch.Generator().manual_seed(1))
    batch = torch.stack([pack_pair(images[i], images[(i + 1) % 4], mask, weight) for i in range(4)])
    torch.manual_seed(3)
    with torch.no_grad():
        ours = float(model(batch)["loss"])
    torch.manual_seed(3)  # the same draws: sampling is the forward's only random step
    points = sample_points(batch[:, 6] > 0.5, batch[:, 7], model.points, model.min_distance, True)
    with torch.no_grad():
        expected = official_loss(model, batch, points, centres=sampling == "centres")
        other = official_loss(model, batch, points, centres=sampling != "centres")
    assert ours == pytest.approx(expected, rel=1e-5)
    assert abs(ours - other) > 1e-3 * expected  # the two readings do differ


# 3. Evaluation blur ---------------------------------------------------------------------------


def official_blur(amap: np.ndarray, kernel: int = 33, sigma: float = 4.0) -> np.ndarray:
    """torchvision's gaussian_blur as test.py calls it: the 1-D Gaussian on
    linspace(-k // 2, k // 2, k), normalised, as an outer product; reflect padding."""
    half = (kernel - 1) * 0.5
    x = np.linspace(-half, half, kernel)
    k1 = np.exp(-0.5 * (x / sigma) ** 2)
    k2 = np.outer(k1 / k1.sum(), k1 / k1.sum())
    padded = np.pad(amap.astype(np.float64), kernel // 2, mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel))
    return np.einsum("ijkl,kl->ij", windows, k2)


def test_the_evaluation_blur_pads_by_reflection() -> None:
    amap = np.random.default_rng(2).random((40, 52)).astype(np.float32)
    ours = smooth_maps(torch.from_numpy(amap)[None], Smoothing(4.0, 33, "reflect"))[0].numpy()
    assert np.abs(ours - official_blur(amap)).max() < 1e-5
    replicate = smooth_maps(torch.from_numpy(amap)[None], Smoothing(4.0, 33, "replicate"))[0]
    assert np.abs(replicate.numpy() - official_blur(amap))[:3].max() > 1e-3  # only the border
    for preset in ("cpr_paper", "cpr_dinov2"):
        evaluation = compose_train(f"preset={preset}").eval
        assert (evaluation.sigma, evaluation.blur_kernel) == (4, 33)
        assert evaluation.blur_padding == "reflect"


# 4. Top-T image score -------------------------------------------------------------------------


def test_the_image_score_is_the_sum_of_the_top_t() -> None:
    amap = torch.rand(320, 320, generator=torch.Generator().manual_seed(4))
    official = float(torch.topk(amap.flatten(), k=512)[0].sum())  # test.py, T = 512
    assert image_score(amap.numpy(), "sum_top512") == pytest.approx(official, rel=1e-6)
    rule = resolve_image_score("sum_top512", "mvtec_ad2", (320, 320))
    assert rule == "sum_top512@320x320"
    assert image_score(amap.numpy(), rule) == pytest.approx(official, rel=1e-6)
    # A map resized from the network's (as ff-eval scores at the original size) scores about
    # as the network's map: T and the sum scale with the area.
    smooth = F.avg_pool2d(amap[None, None], 9, 1, 4)
    bigger = F.interpolate(smooth, size=(700, 900), mode="bilinear")[0, 0].numpy()
    reference = float(torch.topk(smooth.flatten(), k=512)[0].sum())
    assert image_score(bigger, rule) == pytest.approx(reference, rel=0.02)
    for bad in ("sum_top0", "sum_top", "top2", "sum_top5@0x3"):
        with pytest.raises(ConfigError, match="eval.image_score"):
            resolve_image_score(bad, "mvtec_ad2")
    scores = ImageScores(rule="sum_top2")
    scores.update(np.array([[0.0, 0.75], [0.25, 0.25]]), True)  # high max, low top-2 sum
    scores.update(np.array([[0.5, 0.5], [0.0, 0.0]]), False)
    assert scores.scores == pytest.approx([1.0, 1.0])
    assert (scores.auroc(), scores.auroc_max()) == (0.5, 1.0)
    assert image_score_rule(compose_train("preset=cpr_paper")) == "sum_top512@320x320"
    assert image_score_rule(compose_train("preset=cpr_dinov2")) == "sum_top512@448x448"


# 5. Positive-sampling weight ------------------------------------------------------------------


def official_sampling_weight(foreground: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """dataset/base.py: scipy.ndimage.gaussian_filter(sigma = h / 25), written out: kernel
    radius int(4 sigma + 0.5), mode reflect (numpy's symmetric: the edge repeated); sharpen
    1 / (1 + exp(5 - 10 x)); cv.resize (bilinear) to the input."""
    sigma = foreground.shape[0] / 25
    radius = int(4 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.pad(foreground.astype(float), radius, mode="symmetric")
    out = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 0, out)
    out = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 1, out)
    return cv2.resize(1 / (1 + np.exp(5 - 10 * out)), size[::-1])


def test_the_sampling_weight_blurs_with_scipys_reflect() -> None:
    foreground = np.random.default_rng(3).random((50, 60)).astype(np.float32)
    size = (200, 240)
    expected = official_sampling_weight(foreground, size)
    assert np.abs(sampling_weight(foreground, size) - expected).max() < 1e-6
    opencv = sampling_weight(foreground, size, border="reflect101")
    assert np.abs(opencv - expected).max() > 1e-3  # ours: a named option only
    assert compose_train("preset=cpr_paper").cpr.weight_border == "reflect"


# 6. Global-retrieval histograms -----------------------------------------------------------------


def official_histograms(words: torch.Tensor, num_words: int, blocks: int) -> torch.Tensor:
    """models/grb.py: words + 1 (0 = padding) unfolded in blocks of side ceil(h / S) with
    stride the side and padding side * S - h on every border; one-hot means per block."""
    side = (words.shape[-1] + blocks - 1) // blocks
    padding = side * blocks - words.shape[-1]
    ids = F.unfold(words[:, None].float() + 1, side, stride=side, padding=padding).long()
    return F.one_hot(ids, num_words + 1).float().mean(1)


@pytest.mark.parametrize("side", [80, 32])  # DenseNet at 320 px; a grid that needs padding
def test_histograms_are_laid_out_as_the_official_ones(side: int) -> None:
    words = torch.randint(0, 12, (3, side, side), generator=torch.Generator().manual_seed(side))
    expected = official_histograms(words, 12, 5)
    assert expected.shape == (3, 25, 13)
    assert torch.equal(block_histograms(words, 12, 5), expected)


def padding_last(words: torch.Tensor, num_words: int, blocks: int) -> torch.Tensor:
    """The library's earlier layout: padding (bottom, right) counted in the last bin."""
    batch, height, width = words.shape
    side_h, side_w = math.ceil(height / blocks), math.ceil(width / blocks)
    padded = F.pad(
        words, (0, side_w * blocks - width, 0, side_h * blocks - height), value=num_words
    )
    cells = padded.reshape(batch, blocks, side_h, blocks, side_w).permute(0, 1, 3, 2, 4)
    return F.one_hot(cells.reshape(batch, blocks**2, -1), num_words + 1).float().mean(2)


@pytest.mark.parametrize("size", [(80, 80), (48, 56)])  # grids 20 x 20 (no padding), 12 x 14
def test_older_reference_files_are_read_in_the_new_layout(tmp_path, size) -> None:
    geometry = InputGeometry(size)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(6)]
    model = tiny_cpr()
    fitted = model.fit_references(normalised(images, geometry))
    save_references(tmp_path, fitted, images, identity="random:seed=1")
    path = tmp_path / REFERENCES_FILE
    state = load_file(str(path))
    with torch.no_grad():
        fine = model.encoder(fitted.images)[0]
    words = nearest_centre(fine, fitted.codebook)
    state["histograms"] = padding_last(words, 12, 5)  # as an older file stored them
    meta = {"encoder_weights": "random:seed=1", "input_size": f"{size[0]}x{size[1]}"}
    save_file(state, str(path), metadata=meta)
    loaded = load_references(tmp_path, tiny_cpr(), geometry, identity="random:seed=1")
    assert torch.allclose(loaded.histograms, fitted.histograms)
