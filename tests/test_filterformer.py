"""INPFormer / FilterFormer wiring, maps, fusion, parameter counts, registry and configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from filterformer.errors import CheckpointError, ConfigError
from filterformer.models import (
    MAP_MODES,
    DinoEncoder,
    FilterFormer,
    INPFormer,
    build_encoder,
    build_model,
    families,
    fuse_maps,
)
from filterformer.models.inpformer.losses import coherence_loss, soft_mining_loss

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def encoder() -> DinoEncoder:
    torch.manual_seed(0)
    return build_encoder("tiny_random")


@pytest.fixture
def model(encoder: DinoEncoder) -> FilterFormer:
    torch.manual_seed(1)
    return FilterFormer(encoder)


@pytest.mark.parametrize(("hw", "grid"), [((112, 140), (8, 10)), ((84, 84), (6, 6))])
def test_features_and_maps_have_the_grid_and_input_shapes(model: FilterFormer, hw, grid) -> None:
    images = torch.randn(2, 3, *hw)
    feats = model.features(images)
    assert [g.shape for g in feats.enc_groups] == [(2, 64, *grid)] * 2
    assert [g.shape for g in feats.dec_groups] == [(2, 64, *grid)] * 2
    assert feats.inps.shape == (2, 6, 64) and feats.fused.shape == (2, grid[0] * grid[1], 64)
    maps = model.anomaly_maps(images)
    assert set(maps) == {"inp", "filter"} and all(m.shape == (2, *hw) for m in maps.values())


def test_groups_mirror_encoder_taps_and_reversed_decoder_outputs(model: FilterFormer) -> None:
    images = torch.randn(1, 3, 56, 70)
    taps = model.encoder(images)
    fused = torch.stack(taps).mean(0)
    inps = model.extractor(fused)
    decoded = model.decoder(model.bottleneck(fused), inps)
    feats = model.features(images)
    as_map = lambda t: t.transpose(1, 2).reshape(1, 64, 4, 5)  # noqa: E731
    torch.testing.assert_close(feats.fused, fused)
    torch.testing.assert_close(feats.enc_groups[0], as_map(torch.stack(taps[:4]).mean(0)))
    torch.testing.assert_close(feats.dec_groups[0], as_map(torch.stack(decoded[4:]).mean(0)))
    torch.testing.assert_close(feats.dec_groups[1], as_map(torch.stack(decoded[:4]).mean(0)))


def test_features_from_taps_is_features_after_the_encoder(model: FilterFormer) -> None:
    images = torch.randn(2, 3, 56, 70)
    direct = model.features(images)
    split = model.features_from_taps(model.encoder(images), (4, 5))
    for name in ("enc_groups", "dec_groups", "inps", "fused"):
        torch.testing.assert_close(getattr(split, name), getattr(direct, name))


def test_filter_map_compares_unit_encoder_minus_residual_with_decoder(model: FilterFormer) -> None:
    with torch.no_grad():
        model.diff_predictor.head.weight.normal_(std=0.1)
    feats = model.features(torch.randn(2, 3, 56, 70))
    residuals = model.residuals(feats)
    expected = torch.stack(
        [
            1 - F.cosine_similarity(F.normalize(e, dim=1) - r, d, dim=1)
            for e, r, d in zip(feats.enc_groups, residuals, feats.dec_groups, strict=True)
        ]
    ).mean(0)
    maps = model.maps(feats, (4, 5))  # the token grid: upsampling is the identity
    torch.testing.assert_close(maps["filter"], expected)
    assert not torch.allclose(maps["filter"], maps["inp"])


def test_losses_sum_to_the_total(model: FilterFormer) -> None:
    out = model(torch.randn(2, 3, 56, 70))
    assert set(out) == {"loss", "sm", "coherence", "df"}
    expected = out["sm"] + 0.2 * out["coherence"] + 1.0 * out["df"]
    torch.testing.assert_close(out["loss"], expected)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())


def test_encoder_is_excluded_from_training(model: FilterFormer) -> None:
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    trainable = model.trainable_parameters()
    assert trainable and not encoder_ids & {id(p) for p in trainable}
    assert len(trainable) + len(encoder_ids) == len(list(model.parameters()))
    model(torch.randn(1, 3, 56, 70))["loss"].backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in trainable)
    assert not any(k.startswith("encoder.") for k in model.trainable_state_dict())


def test_trainable_state_dict_round_trip(model: FilterFormer, encoder: DinoEncoder) -> None:
    with torch.no_grad():
        model.diff_predictor.head.weight.normal_()  # make "filter" differ from "inp"
    fresh = FilterFormer(encoder)
    fresh.load_trainable_state_dict(model.trainable_state_dict())
    images = torch.randn(1, 3, 56, 70)
    for mode, value in model.anomaly_maps(images).items():
        torch.testing.assert_close(fresh.anomaly_maps(images)[mode], value)
    with pytest.raises(CheckpointError, match="missing.*diff_predictor"):
        fresh.load_trainable_state_dict(INPFormer(encoder).trainable_state_dict())


def test_filter_map_equals_inp_map_at_init(model: FilterFormer) -> None:
    maps = model.anomaly_maps(torch.randn(2, 3, 56, 70))
    torch.testing.assert_close(maps["filter"], maps["inp"])
    assert (maps["inp"] >= 0).all()


def test_diff_loss_does_not_change_decoder_gradients(model: FilterFormer) -> None:
    with torch.no_grad():
        model.diff_predictor.head.weight.normal_(std=0.1)
    feats = model.features(torch.randn(2, 3, 56, 70))
    base = soft_mining_loss(feats.enc_groups, feats.dec_groups) + 0.2 * coherence_loss(
        feats.fused, feats.inps
    )
    inp_params = [
        p
        for n, p in model.named_parameters()
        if n.split(".")[0] in ("extractor", "bottleneck", "decoder")
    ]
    without = torch.autograd.grad(base, inp_params, retain_graph=True)
    with_df = torch.autograd.grad(model.losses(feats)["loss"], inp_params)
    for a, b in zip(without, with_df, strict=True):
        torch.testing.assert_close(a, b)


def test_inpformer_has_only_the_inp_map(encoder: DinoEncoder) -> None:
    model = build_model("inpformer", encoder)
    out = model(torch.randn(1, 3, 56, 70))
    assert set(out) == {"loss", "sm", "coherence"}
    assert set(model.anomaly_maps(torch.randn(1, 3, 56, 70))) == {"inp"}
    assert model.fusion_modes == ("inp",) and FilterFormer.fusion_modes == MAP_MODES


def test_fuse_maps_modes_on_toy_maps() -> None:
    maps = {"inp": torch.tensor([[1.0, 3.0]]), "filter": torch.tensor([[4.0, 0.0]])}
    stats = {"inp": (1.0, 2.0), "filter": (2.0, 1.0)}
    # z-scores: inp (m - 1) / 2 = [0, 1]; filter (m - 2) / 1 = [2, -2]
    torch.testing.assert_close(fuse_maps(maps, "inp", stats), maps["inp"])
    torch.testing.assert_close(fuse_maps(maps, "filter"), maps["filter"])
    torch.testing.assert_close(fuse_maps(maps, "mean", stats), torch.tensor([[1.0, -0.5]]))
    torch.testing.assert_close(fuse_maps(maps, "max", stats), torch.tensor([[2.0, 1.0]]))
    # product: sqrt((max(m, 1e-8) / mean) of inp * that of filter) = sqrt(1 * 2), sqrt(3 * 5e-9)
    expected = torch.tensor([[2.0**0.5, (3.0 * 0.5e-8) ** 0.5]])
    torch.testing.assert_close(fuse_maps(maps, "product", stats), expected)


def test_fuse_maps_bad_inputs() -> None:
    maps = {"inp": torch.zeros(1, 2)}
    with pytest.raises(
        ConfigError, match="unknown map mode 'sum'.*inp, filter, mean, max, product"
    ):
        fuse_maps(maps, "sum")
    with pytest.raises(ConfigError, match="needs the inp and filter"):
        fuse_maps(maps, "mean", {"inp": (0.0, 1.0)})
    with pytest.raises(ConfigError, match="map_stats.json"):
        fuse_maps({**maps, "filter": torch.zeros(1, 2)}, "max", None)


def test_trainable_parameter_counts_match_the_official_architecture(capsys) -> None:
    """17.2 M (S), 68.5 M (B), 121.8 M (L) trainable parameters, counted on the INP-Former code's
    model (INP_Former_Single_Class.py: bottleneck Mlp, one Aggregation_Block, eight
    Prototype_Blocks, the INPs); e.g. ViT-B: 4.72 M + 7.09 M + 8 x 7.09 M + 6 x 768."""
    expected = {
        "dinov2_vits14_reg": 17.2e6,
        "dinov2_vitb14_reg": 68.5e6,
        "dinov2_vitl14_reg": 121.8e6,
    }
    for variant, count in expected.items():
        with torch.device("meta"):  # shapes only: no memory, no init cost
            encoder = build_encoder(variant)
            inp = sum(p.numel() for p in INPFormer(encoder).trainable_parameters())
            filt = sum(p.numel() for p in FilterFormer(encoder).trainable_parameters())
        assert abs(inp - count) / count < 0.005
        with capsys.disabled():
            print(f"\n{variant} trainable: INPFormer {inp:,}, FilterFormer {filt:,}")


def test_registry_refuses_unknown_names(encoder: DinoEncoder) -> None:
    assert {"inpformer", "filterformer", "cpr", "ear", "fader"} <= set(families())
    with pytest.raises(
        ConfigError, match="unknown model name 'patchcore'; valid: cpr, ear, fader, filterformer"
    ):
        build_model("patchcore", encoder)
    with pytest.raises(ConfigError, match="'diff_depth'"):
        build_model("inpformer", encoder, diff_depth=2)
    with pytest.raises(ConfigError, match="diff_loss_type 'l1'"):
        build_model("filterformer", encoder, diff_loss_type="l1")
    with pytest.raises(ConfigError, match="groups"):
        build_model("inpformer", encoder, decoder_depth=4)


@pytest.mark.parametrize("name", ["inpformer", "filterformer"])
def test_model_configs_build(encoder: DinoEncoder, name: str) -> None:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = OmegaConf.to_container(compose(config_name=f"model/{name}"))["model"]
    model = build_model(encoder=encoder, **cfg)
    assert type(model) is families()[name].model
    assert (model.coherence_weight, model.mining_gamma, model.groups) == (
        0.2,
        3.0,
        ((0, 1, 2, 3), (4, 5, 6, 7)),
    )
    assert model.extractor.queries.shape[0] == 6 and len(model.decoder.blocks) == 8


def test_bfloat16_autocast_trains_and_maps_like_float32(model: FilterFormer) -> None:
    """The bf16 path (train.amp_bf16 on CUDA) runs through every loss and map and stays close
    to fp32; checked here with CPU autocast, which uses the same dtype rules."""
    images = torch.randn(2, 3, 56, 70)
    reference = model(images)
    reference["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images)
        maps = model.anomaly_maps(images)
    losses["loss"].backward()
    for name in ("loss", "sm", "coherence", "df"):
        assert torch.isfinite(losses[name]), name
        assert losses[name].item() == pytest.approx(reference[name].item(), rel=0.05, abs=1e-3)
    params = dict(model.named_parameters())
    assert all(torch.isfinite(params[name].grad).all() for name in grads)
    got = torch.cat([params[name].grad.flatten().float() for name in grads])
    fp32 = torch.cat([g.flatten() for g in grads.values()])
    assert F.cosine_similarity(got, fp32, dim=0) > 0.95  # measured 0.98: bf16 keeps 8 bits
    fp32_maps = model.anomaly_maps(images)
    for mode, amap in maps.items():
        assert (amap.float() - fp32_maps[mode]).abs().max() < 0.05, mode
