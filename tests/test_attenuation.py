"""FADeR's attenuation as an INP-Former / Filter-Former plug-in (model.attenuation=fader)."""

from __future__ import annotations

import pytest
import torch

from filterformer.errors import ConfigError
from filterformer.models import FilterFormer, INPFormer, build_encoder, build_model
from filterformer.models.inpformer.attenuation import nearest_inps, token_residuals


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder("tiny_random")


def _model(encoder, cls=INPFormer, seed: int = 1, **kwargs):
    torch.manual_seed(seed)
    return cls(encoder, **kwargs)


def _train_steps(model, images, steps=2):
    model.train()
    optimiser = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = model(images)
        optimiser.zero_grad()
        loss["loss"].backward()
        optimiser.step()
        losses.append({k: v.detach() for k, v in loss.items()})
    return losses


@pytest.mark.parametrize("cls", [INPFormer, FilterFormer])
def test_attenuation_none_leaves_the_model_bit_identical(encoder, cls) -> None:
    images = torch.randn(2, 3, 56, 70)
    default, none = _model(encoder, cls), _model(encoder, cls, attenuation="none")
    assert default.attenuator is None and none.attenuator is None
    state, other = default.trainable_state_dict(), none.trainable_state_dict()
    assert list(state) == list(other) and all(torch.equal(state[k], other[k]) for k in state)
    assert list(default.parameter_groups()) == (
        ["inp_former"] if cls is INPFormer else ["inp_former", "diff_predictor"]
    )
    # INP-Former's own path, composed by hand: decoder(bottleneck(F), extractor(F))
    with torch.no_grad():
        fused = torch.stack(none.encoder(images)).mean(0)
        decoded = none.decoder(none.bottleneck(fused), none.extractor(fused))[::-1]
        first = decoded[0] + decoded[1] + decoded[2] + decoded[3]
        feats = none.features(images)
    torch.testing.assert_close(
        feats.dec_groups[0], (first / 4).transpose(1, 2).reshape(2, 64, 4, 5)
    )
    assert feats.ranking is None
    for a, b in zip(_train_steps(default, images), _train_steps(none, images), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state, other = default.trainable_state_dict(), none.trainable_state_dict()
    assert all(torch.equal(state[k], other[k]) for k in state)


def test_nearest_inps_pick_the_most_cosine_similar_prototype() -> None:
    tokens = torch.tensor([[[1.0, 0.1], [0.0, -2.0], [-3.0, 0.0]]])
    inps = torch.tensor([[[5.0, 0.0], [0.0, 1.0], [0.0, -1.0]]])
    assert nearest_inps(tokens, inps).tolist() == [[[5.0, 0.0], [0.0, -1.0], [0.0, 1.0]]]


def test_token_residuals_are_one_minus_cosine_per_token_averaged_over_groups() -> None:
    enc = [torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])] * 2  # B=1, C=2, h=1, w=2
    dec = [
        torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]]),
        torch.tensor([[[[1.0, -1.0]], [[0.0, 0.0]]]]),
    ]
    # token 0: cos 1 in both groups; token 1: cos 0, then cos -1 -> (1 + 2) / 2
    torch.testing.assert_close(token_residuals(enc, dec), torch.tensor([[0.0, 1.5]]))
    assert token_residuals(enc, enc).abs().max() < 1e-6


@pytest.mark.parametrize("cls", [INPFormer, FilterFormer])
def test_fader_attenuation_trains_its_mlp_by_ranking_only(encoder, cls) -> None:
    model = _model(encoder, cls, attenuation="fader")
    groups = model.parameter_groups()
    assert "attenuator" in groups and list(groups)[0] == "inp_former"
    ids = [id(p) for g in groups.values() for p in g]
    assert sorted(ids) == sorted(id(p) for p in model.trainable_parameters())
    model.train()
    losses = model(torch.randn(2, 3, 56, 70))
    assert "rank" in losses and torch.isfinite(losses["rank"])
    losses["rank"].backward()
    mlp = {id(p) for p in model.attenuator.parameters()}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.attenuator.parameters())
    assert all(p.grad is None for p in model.trainable_parameters() if id(p) not in mlp)
    model.zero_grad(set_to_none=True)
    model(torch.randn(2, 3, 56, 70))["sm"].backward()
    assert all(p.grad is None for p in model.attenuator.parameters())  # mask detached
    model.eval()
    assert "rank" not in model(torch.randn(1, 3, 56, 70))  # the target is measured in training
    maps = model.anomaly_maps(torch.randn(1, 3, 56, 70))
    assert all(m.shape == (1, 56, 70) for m in maps.values())


def test_attenuation_strength_zero_changes_nothing_and_one_fills_the_top_token(encoder) -> None:
    images = torch.randn(2, 3, 56, 70)
    plain = _model(encoder).eval()
    for strength in (0.0, 1.0):
        model = _model(encoder, attenuation="fader", attenuation_strength=strength).eval()
        model.load_state_dict(plain.state_dict(), strict=False)
        same = torch.equal(model.anomaly_maps(images)["inp"], plain.anomaly_maps(images)["inp"])
        assert same == (strength == 0.0)
    with torch.no_grad():
        fused = torch.stack(model.encoder(images)).mean(0)
        inps = model.extractor(fused)
        attenuated, predicted = model.attenuator(fused, inps)
    top = predicted.argmax(dim=1)
    for b in range(2):
        torch.testing.assert_close(attenuated[b, top[b]], nearest_inps(fused, inps)[b, top[b]])


def test_bad_attenuation_settings_are_named(encoder) -> None:
    with pytest.raises(ConfigError, match="attenuation 'cpr'; valid: none, fader"):
        build_model("inpformer", encoder, attenuation="cpr")
    with pytest.raises(ConfigError, match="attenuation_fill 'mean'"):
        build_model("filterformer", encoder, attenuation="fader", attenuation_fill="mean")
    with pytest.raises(ConfigError, match="strength -1"):
        build_model("inpformer", encoder, attenuation="fader", attenuation_strength=-1)
