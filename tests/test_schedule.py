"""Learning-rate schedules: INP-Former's warm-up + cosine (reference values of its
WarmCosineScheduler) and FADeR §4.1's fixed, warm-up and SGDR (against their formulas)."""

import dataclasses
import functools
import math

import pytest
import torch

from conftest import settings_for_tests
from filterformer.errors import ConfigError
from filterformer.training.loop import OptimizerSettings
from filterformer.training.schedule import SCHEDULES, WarmupCosine, warmup_cosine_lr

KW = dict(base_lr=1e-3, final_lr=1e-4, total_iters=1100, warmup_iters=100)


@pytest.mark.parametrize(
    ("iteration", "expected"),
    [
        (0, 0.0),  # linspace starts at 0 ...
        (1, 1e-3 / 99),
        (99, 1e-3),  # ... and includes base_lr at its last point
        (100, 1e-3),  # cosine starts at base_lr
        (600, 1e-4 + 0.5 * 9e-4),  # half way through the cosine
        (1099, 1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 999 / 1000))),
        (1100, 1e-4),  # held at the final value afterwards
        (5000, 1e-4),
    ],
)
def test_reference_values(iteration, expected):
    assert warmup_cosine_lr(iteration, **KW) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_no_warmup_starts_at_base_lr():
    assert warmup_cosine_lr(0, base_lr=1.0, final_lr=0.1, total_iters=10, warmup_iters=0) == 1.0


def test_scheduler_sets_lr_per_iteration_and_resumes_from_state_dict():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = WarmupCosine(opt, **KW)
    seen = []
    for _ in range(150):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([warmup_cosine_lr(i, **KW) for i in range(150)], rel=1e-12)

    opt2 = torch.optim.SGD([param], lr=1.0)
    sched2 = WarmupCosine(opt2, **KW)
    sched2.load_state_dict(sched.state_dict())
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(warmup_cosine_lr(151, **KW), rel=1e-12)


# ------------------------------------------------------------------ FADeR §4.1's three schedules

BASE = 1e-3
EPOCH = 10  # iterations per epoch in these examples
SETTINGS = dict(lr=BASE, warmup_epochs=5, restart_epochs=20, restart_mult=2, min_lr_scale=0.2)
"""RIAD-PyTorch's warm-up and SGDR settings (configs/train.yaml)."""


@functools.cache
def _preset_optimizer() -> OptimizerSettings:
    return settings_for_tests().optimizer


def _options(**changes: object) -> OptimizerSettings:
    """The demo preset's optimiser with :data:`SETTINGS` and ``changes``."""
    return dataclasses.replace(_preset_optimizer(), **{**SETTINGS, **changes})


def _curve(schedule: str, iterations: int, **settings) -> list[float]:
    """The rate of every iteration, as the training loop builds the schedule."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    options = _options(schedule=schedule, **settings)
    sched = options.build_schedule(opt, epochs=100, iters_per_epoch=EPOCH)
    rates = []
    for _ in range(iterations):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def sgdr_reference(iteration: int) -> float:
    """Warm-up over 5 epochs, then SGDR eq. 5 (Loshchilov and Hutter) in epochs: T_0 = 20,
    T_mult = 2, eta_min = lr / 5, T_cur counted in fractions of an epoch."""
    if iteration < 5 * EPOCH:
        return BASE * iteration / (5 * EPOCH)
    t_cur, t_i = (iteration - 5 * EPOCH) / EPOCH, 20
    while t_cur >= t_i:
        t_cur, t_i = t_cur - t_i, 2 * t_i
    low = BASE / 5
    return low + 0.5 * (BASE - low) * (1 + math.cos(math.pi * t_cur / t_i))


def test_fixed_holds_the_base_rate():
    assert _curve("fixed", 300) == [BASE] * 300


@pytest.mark.parametrize(
    ("iteration", "expected"),
    [(0, 0.0), (1, BASE / 50), (25, BASE / 2), (49, BASE * 49 / 50), (50, BASE), (999, BASE)],
)
def test_warmup_ramps_linearly_over_five_epochs_then_holds(iteration, expected):
    assert _curve("warmup", 1000)[iteration] == pytest.approx(expected, rel=1e-12, abs=1e-18)


@pytest.mark.parametrize(
    ("iteration", "expected"),
    [
        (25, BASE / 2),  # warm-up, as "warmup"
        (50, BASE),  # first period (20 epochs) starts at the base rate ...
        (150, 6e-4),  # ... half way: lr/5 + (lr - lr/5) / 2
        (250, BASE),  # restart after 20 epochs; the next period lasts 40
        (450, 6e-4),
        (650, BASE),  # restart after 20 + 40 epochs; then 80
        (1450, BASE),
    ],
)
def test_sgdr_reference_values(iteration, expected):
    assert _curve("sgdr", 1500)[iteration] == pytest.approx(expected, rel=1e-9)


def test_sgdr_follows_the_formula_at_every_iteration():
    assert _curve("sgdr", 1500) == pytest.approx([sgdr_reference(i) for i in range(1500)])
    assert min(_curve("sgdr", 1500)[50:]) > BASE / 5  # annealed towards lr / 5, never below


def test_every_schedule_keeps_a_groups_lr_scale_and_resumes_from_its_state(tmp_path):
    """FADeR's decoder trains at 0.1 x; a resumed run restarts the curve where it stopped."""
    for schedule in SCHEDULES:
        weights = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
        groups = [{"params": [weights[0]]}, {"params": [weights[1]], "lr_scale": 0.1}]
        opt = torch.optim.SGD(groups, lr=1.0)
        options = _options(schedule=schedule)
        sched = options.build_schedule(opt, epochs=100, iters_per_epoch=EPOCH)
        for _ in range(60):
            opt.step()
            sched.step()
        rates = [group["lr"] for group in opt.param_groups]
        assert rates[1] == pytest.approx(0.1 * rates[0]) and rates[0] > 0
        torch.save(sched.state_dict(), tmp_path / "state.pt")
        other = _options().build_schedule(
            torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 1, 1
        )
        other.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
        assert other.name == schedule and other.last_epoch == 60


def test_an_unknown_schedule_is_named():
    param = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ConfigError, match="train.optimizer.schedule 'cosine'"):
        _options(schedule="cosine").build_schedule(torch.optim.SGD([param]), 1, 1)
