"""StableAdamW follows the INP-Former formulas step for step; build_optimizer picks by name."""

import copy

import numpy as np
import pytest
import torch

from filterformer.errors import ConfigError
from filterformer.training.optim import StableAdamW, build_optimizer

LR, BETAS, WD, EPS, CLIP = 1e-2, (0.9, 0.999), 1e-2, 1e-10, 1.0


def reference_steps(p0: np.ndarray, grads: list[np.ndarray], lrs: list[float]) -> tuple:
    """The recipe's update in float64 NumPy; also returns the clipping factor of every step."""
    p, m, v, vmax = p0.copy(), np.zeros_like(p0), np.zeros_like(p0), np.zeros_like(p0)
    factors = []
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        p = p * (1 - lr * WD)
        m = BETAS[0] * m + (1 - BETAS[0]) * g
        v = BETAS[1] * v + (1 - BETAS[1]) * g * g
        vmax = np.maximum(vmax, v)
        denom = np.sqrt(vmax) / np.sqrt(1 - BETAS[1] ** t) + EPS
        factor = max(1.0, np.sqrt(np.mean((g / denom) ** 2)) / CLIP)
        factors.append(factor)
        p = p - (lr / factor) / (1 - BETAS[0] ** t) * m / denom
    return p, factors


def test_matches_numpy_reference_including_clipped_steps():
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(5, 4))
    # Shrinking gradients keep the AMSGrad max above v; the jump at step 4 makes |g| / denom
    # large, so update clipping triggers there.
    scales = [1.0, 0.5, 0.2, 30.0, 0.1, 1.0]
    grads = [s * rng.normal(size=p0.shape) for s in scales]
    lrs = [LR * (1 - 0.1 * i) for i in range(len(grads))]
    expected, factors = reference_steps(p0, grads, lrs)
    assert factors[3] > 1.0 and factors[1] == 1.0

    param = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = StableAdamW([param], lr=LR, betas=BETAS, weight_decay=WD, eps=EPS, clip_threshold=CLIP)
    for g, lr in zip(grads, lrs, strict=True):
        opt.param_groups[0]["lr"] = lr
        param.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-12, atol=1e-14)


def test_first_step_moves_every_entry_by_lr_unless_clipped():
    # At t = 1, m / denom = sign(g) (eps aside), so |update| = lr / max(1, RMS(g/denom)) = lr.
    param = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = StableAdamW([param], lr=0.1, weight_decay=0.0, clip_threshold=2.0)
    param.grad = torch.tensor([3.0, -0.5, 1e-3], dtype=torch.float64)
    opt.step()
    np.testing.assert_allclose(param.detach().numpy(), [-0.1, 0.1, -0.1], rtol=1e-6)


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = StableAdamW([a], lr=0.05)
    opt_a_grads = [torch.randn(4) for _ in range(4)]
    a.grad = opt_a_grads[0]
    opt_a.step()
    opt_b = StableAdamW([b], lr=0.05)
    b.data.copy_(a.data)
    # deepcopy: a state_dict holds references to the live moment tensors.
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for g in opt_a_grads[1:]:
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b)


def test_build_optimizer_by_name():
    params = [torch.nn.Parameter(torch.zeros(2))]
    kwargs = dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-10, amsgrad=True)
    assert isinstance(build_optimizer("stable_adamw", params, **kwargs), StableAdamW)
    assert isinstance(build_optimizer("adamw", params, **kwargs), torch.optim.AdamW)
    with pytest.raises(ConfigError, match="stable_adamw, adamw"):
        build_optimizer("sgd", params, **kwargs)
