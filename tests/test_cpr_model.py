"""CPR's local retrieval, loss, backbones and model interface."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from filterformer.data.transforms import InputGeometry
from filterformer.errors import CheckpointError, ConfigError
from filterformer.models.cpr import CPR, DenseNetFeatures, MemoryBank, pack_pair
from filterformer.models.cpr.backbones import densenet_layout
from filterformer.models.cpr.local import windowed_min_distance
from filterformer.models.cpr.loss import point_pair_loss, sample_points
from filterformer.models.cpr.run_files import load_references, normalised, save_references
from filterformer.models.registry import build_encoder, build_model


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-3)


def brute_force(query: torch.Tensor, refs: torch.Tensor, window: int) -> torch.Tensor:
    """min over references and in-image window positions of 1 - <q, r>, one location at a time."""
    batch, _, height, width = query.shape
    out = torch.empty(batch, height, width)
    r = window // 2
    for b, y, x in itertools.product(range(batch), range(height), range(width)):
        candidates = [
            1 - float(query[b, :, y, x] @ refs[b, k, :, yy, xx])
            for k in range(refs.shape[1])
            for yy in range(y - r, y + r + 1)
            for xx in range(x - r, x + r + 1)
            if 0 <= yy < height and 0 <= xx < width
        ]
        out[b, y, x] = min(candidates)
    return out


@pytest.mark.parametrize("window", [1, 3, 5])
def test_windowed_minimum_equals_brute_force(window: int) -> None:
    query, refs = unit(2, 5, 6, 7, seed=1), unit(2, 3, 5, 6, 7, seed=2)
    assert torch.allclose(
        windowed_min_distance(query, refs, window), brute_force(query, refs, window), atol=1e-6
    )


def test_a_reference_shifted_by_one_cell_is_found_inside_the_window() -> None:
    query = unit(1, 8, 6, 6, seed=3)
    shifted = torch.roll(query, shifts=(1, -1), dims=(2, 3))[:, None]  # content moves 1 cell
    inner = windowed_min_distance(query, shifted, 3)[0, 1:5, 1:5]
    assert inner.abs().max() < 1e-6
    assert windowed_min_distance(query, shifted, 1)[0, 1:5, 1:5].min() > 1e-3


def test_bank_uses_only_each_querys_neighbours() -> None:
    bank_fine, bank_coarse = unit(6, 4, 8, 8, seed=4), unit(6, 4, 4, 4, seed=5)
    neighbours = torch.tensor([[1, 4], [0, 2], [5, 3]])
    unused = [i for i in range(6) if i not in neighbours]
    bank_fine[unused] = torch.nan  # a reference that is not retrieved must never be read
    bank = MemoryBank([bank_fine, bank_coarse])
    queries = [unit(3, 4, 8, 8, seed=6), unit(3, 4, 4, 4, seed=7)]
    for chunk in (1, 2, 3):
        fine, coarse = bank.distances(queries, neighbours, (3, 1), chunk=chunk)
        refs = bank.scales[0][neighbours].float()
        assert torch.allclose(fine, brute_force(queries[0], refs, 3), atol=2e-3)  # float16 bank
        assert torch.isfinite(coarse).all() and coarse.shape == (3, 4, 4)
    assert bank.nbytes == 6 * 4 * (8 * 8 + 4 * 4) * 2  # N x D x (h_4 w_4 + h_8 w_8) x 2 B


def test_loss_is_zero_beyond_the_margins_and_its_gradient_is_the_hinge_cubed() -> None:
    cos_pos = torch.tensor([[0.95, 0.8, 0.3, -0.5]], dtype=torch.float64, requires_grad=True)
    cos_neg = torch.tensor([[-0.9, -0.2, 0.1, 0.7]], dtype=torch.float64, requires_grad=True)
    w_pos = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)  # last: padding
    w_neg = torch.tensor([[1.0, 2.0, 1.0, 0.5]], dtype=torch.float64)
    pos, neg = point_pair_loss(cos_pos[:, :2], w_pos[:, :2], cos_neg[:, :2], w_neg[:, :2])
    assert pos == 0 and neg == 0  # cos >= 0.8 positives, cos <= -0.2 negatives cost nothing
    pos, neg = point_pair_loss(cos_pos, w_pos, cos_neg, w_neg)
    assert pos.item() == pytest.approx(0.5**3 / 3)
    assert neg.item() == pytest.approx((0.3**3 + (0.9 * 0.5) ** 3) / 4)
    (pos + neg).backward()
    # d/dc [max(0, m - c) w]^3 = -3 w^3 (m - c)^2 below the margin, 0 beyond it; / #(w > 0)
    assert torch.allclose(
        cos_pos.grad, torch.tensor([[0, 0, -3 * 0.5**2 / 3, 0]], dtype=torch.float64)
    )
    expected_neg = [0, 0, 3 * 0.3**2 / 4, 3 * 0.5**3 * 0.9**2 / 4]
    assert torch.allclose(cos_neg.grad, torch.tensor([expected_neg], dtype=torch.float64))

    def plain(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return sum(
            point_pair_loss(
                F.cosine_similarity(a, b, dim=1)[None],
                torch.ones(1, 5, dtype=a.dtype),
                F.cosine_similarity(b, a.flip(0), dim=1)[None],
                torch.ones(1, 5, dtype=a.dtype),
            )
        )

    a = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(plain, (a, b))


def test_point_sampling_respects_mask_weights_and_distance() -> None:
    torch.manual_seed(0)
    mask = torch.zeros(2, 32, 40, dtype=torch.bool)
    mask[0, 5:10, 5:15] = True
    weight = torch.zeros(2, 32, 40)
    weight[:, :, 20:] = 1.0  # positives only from the right half
    points = sample_points(mask, weight, count=30, min_distance=6.0)  # pixel (x, y)

    pos = points.positives.query[points.positives.valid > 0]
    assert len(pos) == 60 and (pos[:, 0] >= 20).all()
    anomalies = points.anomalies.query
    assert points.anomalies.valid[0].sum() == 30 and points.anomalies.valid[1].sum() == 0
    inside = anomalies[0]
    assert (
        (inside[:, 0] >= 5) & (inside[:, 0] < 15) & (inside[:, 1] >= 5) & (inside[:, 1] < 10)
    ).all()
    spatial = points.spatial
    gap = (spatial.query - spatial.reference).norm(dim=-1)[spatial.valid > 0]
    assert len(gap) > 0 and (gap > 6.0).all()


def test_densenet_weights_load_from_timm_and_torchvision_files(tmp_path) -> None:
    torch.manual_seed(0)
    network = timm.models.densenet.DenseNet(growth_rate=8, block_config=(2, 2))
    network.eval()
    state = {k: v.contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(tmp_path / "tiny.safetensors"))
    old_names = {  # torchvision's names: denselayer<i>.norm.1, conv.1, norm.2, conv.2
        re.sub(r"(denselayer\d+\.(?:norm|conv))([12])", r"\1.\2", k): v for k, v in state.items()
    }
    assert any(".norm.2." in k for k in old_names) and not any(".conv1." in k for k in old_names)
    torch.save(old_names, tmp_path / "tiny.pth")
    images = torch.randn(2, 3, 64, 72)
    with torch.no_grad():
        x = network.features.pool0(network.features.norm0(network.features.conv0(images)))
        fine = network.features.denseblock1(x)
        coarse = network.features.denseblock2(network.features.transition1(fine))
    for file in ("tiny.safetensors", "tiny.pth"):
        backbone = DenseNetFeatures("tiny_densenet", weights=tmp_path / file)
        out = backbone(images)
        assert torch.equal(out[0], fine) and torch.equal(out[1], coarse)
        assert out[0].shape == (2, 32, 16, 18) and out[1].shape == (2, 32, 8, 9)
        assert not any(p.requires_grad for p in backbone.parameters())


def test_densenet201_shapes_and_refused_files(tmp_path) -> None:
    backbone = DenseNetFeatures("densenet201")
    fine, coarse = backbone(torch.randn(1, 3, 64, 64))
    assert backbone.channels == (256, 512) and fine.shape == (1, 256, 16, 16)
    assert coarse.shape == (1, 512, 8, 8)
    fake121 = {
        f"features.denseblock{b}.denselayer{i}.conv2.weight": torch.zeros(32, 1, 1, 1)
        for b, n in enumerate((6, 12, 24, 16), start=1)
        for i in range(1, n + 1)
    }
    assert densenet_layout(fake121) == (32, (6, 12, 24, 16))
    torch.save(fake121, tmp_path / "d121.pth")
    with pytest.raises(CheckpointError, match="looks like densenet121.*asks for densenet201"):
        DenseNetFeatures("densenet201", weights=tmp_path / "d121.pth")
    with pytest.raises(CheckpointError, match="missing.pth does not exist"):
        DenseNetFeatures("densenet201", weights=tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="densenet201.safetensors"):
        DenseNetFeatures("densenet201", pretrained=True)


def tiny_cpr(**settings: object) -> CPR:
    torch.manual_seed(0)
    defaults = dict(
        top_k=3, codebook_samples=2000, points=40, out_dim=32, inner_dim=16, inception_dim=16
    )
    return build_model("cpr", build_encoder("tiny_densenet"), **(defaults | settings))


def test_model_trains_only_its_heads_and_maps_refresh_after_loading() -> None:
    model = tiny_cpr(foreground=True, spatial_negatives=True)
    images = torch.randn(8, 3, 48, 56)
    model.fit_references(images)
    assert {name.split(".")[0] for name in model.trainable_state_dict()} == {"heads"}
    mask = torch.zeros(48, 56)
    mask[10:20, 10:30] = 1
    batch = torch.stack(
        [pack_pair(images[i], images[i + 1], mask, torch.ones(48, 56)) for i in range(4)]
    )
    frozen = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model.eval()
    before = model.anomaly_maps(images[:3])["cpr"]
    assert before.shape == (3, 48, 56)
    assert model.memory_bank().nbytes == 8 * 32 * (12 * 14 + 6 * 7) * 2
    trained = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    model.train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    losses = model(batch)
    assert set(losses) == {"loss", "pos", "neg"} and losses["loss"] > 0
    losses["loss"].backward()
    optimizer.step()
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in frozen.items())
    model.eval()
    after = model.anomaly_maps(images[:3])["cpr"]
    assert not torch.allclose(before, after)  # the bank was rebuilt with the new heads
    model.load_state_dict(trained, strict=False)
    assert torch.allclose(model.anomaly_maps(images[:3])["cpr"], before, atol=1e-6)


def test_model_bad_inputs() -> None:
    model = tiny_cpr()
    with pytest.raises(ConfigError, match="no reference set"):
        model.eval().anomaly_maps(torch.randn(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="packed pairs"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="two positive odd"):
        tiny_cpr(windows=(3, 2))
    with pytest.raises(ConfigError, match="unknown setting"):
        tiny_cpr(kmeans_words=3)
    with pytest.raises(ConfigError, match="encoder.taps"):
        build_model("cpr", build_encoder("tiny_random"))


def test_cpr_on_dinov2_tokens() -> None:
    torch.manual_seed(0)
    model = build_model(
        "cpr", build_encoder("tiny_random", taps=[4, 9]), top_k=2, codebook_samples=500
    )
    images = torch.randn(5, 3, 42, 56)
    model.fit_references(images)
    model.eval()
    maps = model.anomaly_maps(images[:2])["cpr"]
    assert maps.shape == (2, 42, 56) and torch.isfinite(maps).all()
    assert model.encoder.strides == (14, 14) and model.min_distance == pytest.approx(14 * 2**0.5)


def test_reference_set_round_trips_through_the_run_file(tmp_path) -> None:
    geometry = InputGeometry((48, 56))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 56, 3), dtype=np.uint8) for _ in range(8)]
    for image in images:
        image[12:36, 14:42] = (220, 180, 40)  # an object on a noisy background
    model = tiny_cpr(foreground=True)
    fitted = model.fit_references(normalised(images, geometry))
    save_references(tmp_path, fitted, images, identity="random:seed=1")
    other = tiny_cpr(foreground=True)
    loaded = load_references(tmp_path, other, geometry, identity="random:seed=1")
    for key, value in fitted.state().items():
        assert torch.equal(loaded.state()[key], value), key
    assert torch.equal(loaded.images, fitted.images)
    model.eval()
    other.eval()
    query = normalised(images[:2], geometry)
    assert torch.equal(model.anomaly_maps(query)["cpr"], other.anomaly_maps(query)["cpr"])
    with pytest.raises(CheckpointError, match="another setup.*encoder_weights"):
        load_references(tmp_path, other, geometry, identity="random:seed=2")
