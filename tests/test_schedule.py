"""Warm-up + cosine learning rate: reference values of INP-Former's WarmCosineScheduler."""

import math

import pytest
import torch

from filterformer.training.schedule import WarmupCosine, warmup_cosine_lr

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
