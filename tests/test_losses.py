"""coherence_loss, soft_mining_loss and diff_loss: reference values and gradient semantics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from filterformer.errors import ConfigError
from filterformer.models import coherence_loss, diff_loss, soft_mining_loss


def test_coherence_loss_is_mean_distance_to_the_nearest_inp() -> None:
    fused = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], requires_grad=True)  # 1 image, 2 tokens
    inps = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]], requires_grad=True)  # 2 INPs
    loss = coherence_loss(fused, inps)
    # token 1 coincides with INP 1 (distance 0); token 2 is 45 degrees from INP 2
    assert loss.item() == pytest.approx((0 + 1 - 1 / math.sqrt(2)) / 2, abs=1e-6)
    loss.backward()
    assert fused.grad is None  # only the INPs learn from L_c
    assert inps.grad[0, 1].abs().sum() > 0 and inps.grad[0, 0].abs().sum() == 0


def _global_cosine(enc: list[torch.Tensor], dec: list[torch.Tensor]) -> torch.Tensor:
    """Unweighted reference: mean over groups and images of 1 - cos(vec(E), vec(D))."""
    per_group = [
        (1 - F.cosine_similarity(e.flatten(1), d.flatten(1), dim=1)).mean()
        for e, d in zip(enc, dec, strict=True)
    ]
    return torch.stack(per_group).mean()


def _soft_mining_weights(e: torch.Tensor, d: torch.Tensor, gamma: float) -> torch.Tensor:
    distance = 1 - F.cosine_similarity(e, d, dim=1)  # B x h x w
    return ((distance / distance.mean()) ** gamma).unsqueeze(1)


@pytest.fixture
def groups() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    enc = [torch.randn(3, 5, 4, 6) for _ in range(2)]
    dec = [(e + 0.8 * torch.randn_like(e)).requires_grad_() for e in enc]
    return enc, dec


@pytest.mark.parametrize("gamma", [3.0, 0.0])
def test_soft_mining_value_is_plain_and_gradient_is_reweighted(groups, gamma: float) -> None:
    enc, dec = groups
    loss = soft_mining_loss(enc, dec, gamma=gamma)
    reference = _global_cosine(enc, dec)
    torch.testing.assert_close(loss, reference)
    plain = torch.autograd.grad(reference, dec)
    mined = torch.autograd.grad(loss, dec)
    for d, e, g_plain, g_mined in zip(dec, enc, plain, mined, strict=True):
        torch.testing.assert_close(g_mined, g_plain * _soft_mining_weights(e, d.detach(), gamma))
    assert torch.allclose(mined[0], plain[0]) == (gamma == 0)  # gamma 0: no reweighting


def test_soft_mining_leaves_other_losses_through_the_decoder_untouched(groups) -> None:
    enc, dec = groups

    def other() -> torch.Tensor:
        return sum(d.square().mean() for d in dec)

    together = torch.autograd.grad(soft_mining_loss(enc, dec) + other(), dec)
    mined = torch.autograd.grad(soft_mining_loss(enc, dec), dec)
    plain_other = torch.autograd.grad(other(), dec)
    for g, a, b in zip(together, mined, plain_other, strict=True):
        torch.testing.assert_close(g, a + b)


def test_soft_mining_detaches_the_encoder(groups) -> None:
    enc, dec = groups
    enc = [e.clone().requires_grad_() for e in enc]
    soft_mining_loss(enc, dec).backward()
    assert all(e.grad is None for e in enc)


def _tokens(*channels: float) -> torch.Tensor:
    """A 2 x C x 2 x 2 map whose every token is `channels`."""
    return torch.tensor(channels).reshape(1, -1, 1, 1).expand(2, -1, 2, 2).clone()


def test_diff_loss_reference_values() -> None:
    # residual targets between unit tokens: n(E) - n(D) = (1, -1, 0) and (0, -1, 1)
    enc = [_tokens(2.0, 0.0, 0.0), _tokens(0.0, 0.0, 4.0)]
    dec = [_tokens(0.0, 5.0, 0.0), _tokens(0.0, 0.03, 0.0)]
    zero = [torch.zeros(2, 3, 2, 2) for _ in range(2)]
    # squared L2 over channels: 2 for both targets
    assert diff_loss(zero, enc, dec, kind="mse").item() == pytest.approx(2.0)
    pred = [_tokens(1.0, -1.0, 0.0), _tokens(0.0, 1.0, -1.0)]  # exact; opposite
    # group 1: 0; group 2: |(0, 2, -2)|^2 = 8
    assert diff_loss(pred, enc, dec, kind="mse").item() == pytest.approx((0 + 8) / 2)
    # cosine: aligned with the residual -> 0, opposite -> 2
    assert diff_loss(pred, enc, dec, kind="cosine").item() == pytest.approx((0 + 2) / 2)


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_diff_loss_ignores_the_scale_of_encoder_and_decoder_tokens(kind: str) -> None:
    torch.manual_seed(0)
    enc, dec, pred = ([torch.randn(2, 4, 3, 3)] for _ in range(3))
    scale_e, scale_d = torch.rand(2, 1, 3, 3) + 0.1, torch.rand(2, 1, 3, 3) * 0.01 + 1e-3
    rescaled = diff_loss(pred, [enc[0] * scale_e], [dec[0] * scale_d], kind)
    torch.testing.assert_close(rescaled, diff_loss(pred, enc, dec, kind))


def test_diff_loss_target_is_detached() -> None:
    enc = [torch.randn(1, 4, 2, 3, requires_grad=True)]
    dec = [torch.randn(1, 4, 2, 3, requires_grad=True)]
    pred = [torch.randn(1, 4, 2, 3, requires_grad=True)]
    diff_loss(pred, enc, dec).backward()
    assert enc[0].grad is None and dec[0].grad is None and pred[0].grad is not None


def test_diff_loss_unknown_kind_is_refused() -> None:
    x = [torch.zeros(1, 2, 1, 1)]
    with pytest.raises(ConfigError, match="'l1'.*mse, cosine"):
        diff_loss(x, x, x, kind="l1")
