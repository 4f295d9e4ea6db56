"""The training loop: exact resume (after kill -9 anywhere), NaN guard, best checkpoint per
fusion mode, run-folder files."""

import csv
import json
import math
import multiprocessing
import os
import random
import re
import signal
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import settings_for_tests
from filterformer.data.mvtec_ad2 import MVTecAD2
from filterformer.data.training_set import TrainingImages
from filterformer.data.transforms import InputGeometry, TrainAugment
from filterformer.errors import ConfigError
from filterformer.models import MAP_MODES, build_encoder, build_model
from filterformer.training import checkpoint
from filterformer.training.checkpoint import checkpoint_files, has_checkpoint, load_checkpoint
from filterformer.training.loop import Evaluation, EvaluationSettings, NonFiniteLossError, train
from filterformer.training.validation import FusionEvaluator, map_statistics

GEOMETRY = InputGeometry((56, 70))  # 4 x 5 tokens: the cheapest input the tiny ViT takes
IDENTITY = {"model": "filterformer", "encoder": "tiny_random", "encoder_weights": "random:seed=0"}
OPTIM = {"lr": 1e-3, "final_lr": 1e-4, "warmup_iters": 2}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is as fast, and immune to oversubscribed test machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model():
    torch.manual_seed(0)
    encoder = build_encoder("tiny_random", pretrained=False)
    return build_model("filterformer", encoder, decoder_depth=8, diff_depth=1)


def train_set(root, augment=True):
    samples = MVTecAD2(root, "synthetic", "train")  # 8 images -> 2 steps per epoch at batch 4
    aug = TrainAugment(color_jitter={"brightness": 0.3}, hflip=0.5) if augment else None
    return TrainingImages(samples, GEOMETRY, aug, seed=3)


EVALUATION_KEYS = {"eval_every": "every", "evaluator": "evaluator", "category": "category"}


def run(root, run_dir, model=None, step_callback=None, map_statistics=None, **kwargs):
    """Train the tiny model 3 epochs of batch 4 (keywords: TrainSettings fields and the
    evaluation's ``eval_every``, ``evaluator``, ``category``, ``map_statistics``)."""
    model = model or tiny_model()
    evaluation = {EVALUATION_KEYS[k]: kwargs.pop(k) for k in list(kwargs) if k in EVALUATION_KEYS}
    settings = settings_for_tests(
        **{"epochs": 3, "batch_size": 4, "optimizer": dict(OPTIM), "seed": 5, **kwargs}
    )
    result = train(
        model,
        train_set(root),
        run_dir=run_dir,
        checkpoint_meta=IDENTITY,
        settings=settings,
        evaluation=EvaluationSettings(**evaluation, map_statistics=map_statistics),
        step_callback=step_callback,
    )
    return model, result


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_resume_after_a_kill_ends_with_the_same_weights(synthetic_root, tmp_path):
    straight, _ = run(synthetic_root, tmp_path / "straight")

    def kill_at_step_5(step, row):
        if step == 5:  # first step of the last epoch: the epoch-2 checkpoint is on disk
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(synthetic_root, tmp_path / "resumed", step_callback=kill_at_step_5)
    resumed, result = run(synthetic_root, tmp_path / "resumed", resume=True)

    assert (result.step, result.epoch) == (6, 3)
    for name, tensor in straight.trainable_state_dict().items():
        assert torch.equal(tensor, resumed.trainable_state_dict()[name]), name
    # The step log of the resumed run is the uninterrupted one, row for row.
    assert read_rows(tmp_path / "resumed" / "train_log.csv") == read_rows(
        tmp_path / "straight" / "train_log.csv"
    )


@pytest.mark.slow
def test_log_has_one_row_per_step_with_losses_and_lr(synthetic_root, tmp_path):
    run(synthetic_root, tmp_path)
    rows = read_rows(tmp_path / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert set(rows[0]) == {"step", "epoch", "lr", "loss", "sm", "coherence", "df"}
    assert [float(r["lr"]) for r in rows[:3]] == pytest.approx([0.0, 1e-3, 1e-3])
    meta = json.loads((tmp_path / "checkpoints" / "last.json").read_text())
    assert (meta["step"], meta["epoch"], meta["encoder"]) == (6, 3, "tiny_random")


def test_the_loop_steps_the_configured_schedule_in_epochs(synthetic_root, tmp_path):
    """train.optimizer.schedule=sgdr, 2 steps per epoch: 1 epoch of warm-up, then periods of
    1 and 2 epochs from 1e-3 towards 2e-4 (SGDR eq. 5)."""
    sgdr = {"lr": 1e-3, "schedule": "sgdr", "warmup_epochs": 1, "restart_epochs": 1}
    run(synthetic_root, tmp_path, optimizer={**sgdr, "restart_mult": 2, "min_lr_scale": 0.2})
    rates = [float(r["lr"]) for r in read_rows(tmp_path / "train_log.csv")]
    cos = 2e-4 + 4e-4 * (1 + math.cos(math.pi / 4))
    assert rates == pytest.approx([0.0, 5e-4, 1e-3, 6e-4, 1e-3, cos])


class NaNAtStep(torch.nn.Module):
    """Wraps a model and makes its loss NaN from the ``bad_step``-th forward pass on."""

    def __init__(self, inner, bad_step):
        super().__init__()
        self.inner, self.bad_step, self.calls = inner, bad_step, 0

    def forward(self, images):
        self.calls += 1
        losses = self.inner(images)
        if self.calls >= self.bad_step:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    def trainable_parameters(self):
        return self.inner.trainable_parameters()

    def parameter_groups(self):
        return self.inner.parameter_groups()

    def trainable_state_dict(self):
        return self.inner.trainable_state_dict()


@pytest.mark.slow
def test_nan_loss_stops_with_its_step_and_keeps_the_last_good_checkpoint(synthetic_root, tmp_path):
    model = NaNAtStep(tiny_model(), bad_step=4)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 4 "):
        run(synthetic_root, tmp_path, model=model)
    meta = json.loads((tmp_path / "checkpoints" / "last.json").read_text())
    assert (meta["step"], meta["epoch"]) == (2, 1)  # the epoch before the NaN
    load_checkpoint(tmp_path / "checkpoints" / "last", tiny_model(), expected=IDENTITY)
    rows = read_rows(tmp_path / "train_log.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"] and rows[-1]["loss"] == "nan"


@pytest.mark.slow
def test_refuses_to_overwrite_a_trained_run(synthetic_root, tmp_path):
    run(synthetic_root, tmp_path, epochs=1)
    with pytest.raises(ConfigError, match="resume=true"):
        run(synthetic_root, tmp_path, epochs=1)


@pytest.mark.slow
def test_keeps_best_checkpoint_per_mode_and_writes_fusion_json(synthetic_root, tmp_path):
    # Scripted scores: "inp" peaks at epoch 1, "filter" at epoch 2 with the highest score.
    script = {
        1: {"inp": 0.5, "filter": 0.2},
        2: {"inp": 0.4, "filter": 0.6},
        3: {"inp": 0.1, "filter": 0.3},
    }
    epoch = iter([1, 2, 3])

    def evaluator(model):
        e = next(epoch)
        scores = {mode: {"f1_max": s, "au_pro": s / 2} for mode, s in script[e].items()}
        return Evaluation(scores, {"inp": (0.1 * e, 0.02), "filter": (0.3 * e, 0.05)})

    _, result = run(
        synthetic_root,
        tmp_path,
        eval_every=1,
        evaluator=evaluator,
        category="synthetic",
        map_statistics=lambda model: pytest.fail("the last epoch's evaluation measured them"),
    )
    checkpoints = tmp_path / "checkpoints"
    best = {m: json.loads((checkpoints / f"best_{m}.json").read_text()) for m in ("inp", "filter")}
    assert (best["inp"]["epoch"], best["filter"]["epoch"]) == (1, 2)
    assert best["filter"]["metrics"] == {"f1_max": 0.6, "au_pro": 0.3}
    # each best checkpoint keeps the map statistics of its own weights (epoch 2 for "filter")
    assert best["filter"]["map_stats"] == {"inp": [0.2, 0.02], "filter": [0.6, 0.05]}
    assert best["inp"]["map_stats"] == {"inp": [0.1, 0.02], "filter": [0.3, 0.05]}
    assert result.fusion_mode == "filter"
    assert json.loads((tmp_path / "fusion.json").read_text()) == {"synthetic": "filter"}
    # map_stats.json (for `last`) reuses the statistics of the last epoch's evaluation
    assert json.loads((tmp_path / "map_stats.json").read_text())["filter"] == {
        "mean": pytest.approx(0.9),
        "std": 0.05,
    }
    assert len(read_rows(tmp_path / "eval_log.csv")) == 6  # 3 evaluations x 2 modes


@pytest.mark.slow
def test_map_statistics_are_measured_at_the_end_when_the_last_epoch_is_not_evaluated(
    synthetic_root, tmp_path
):
    run(
        synthetic_root,
        tmp_path,
        map_statistics=lambda model: {"inp": (0.1, 0.02), "filter": (0.3, 0.05)},
    )
    assert json.loads((tmp_path / "map_stats.json").read_text())["filter"] == {
        "mean": 0.3,
        "std": 0.05,
    }


def test_fusion_evaluator_scores_every_mode_and_statistics_cover_both_maps(synthetic_root):
    model = tiny_model().eval()
    validation = MVTecAD2(synthetic_root, "synthetic", "validation")
    test = MVTecAD2(synthetic_root, "synthetic", "test_public")
    stats = map_statistics(model, validation, GEOMETRY)
    assert set(stats) == {"inp", "filter"} and all(std > 0 for _, std in stats.values())
    evaluation = FusionEvaluator(validation, test, GEOMETRY)(model)
    assert tuple(evaluation.scores) == MAP_MODES
    assert evaluation.map_stats == stats  # the statistics the fused modes were scored with
    values = np.array([[s["au_pro"], s["f1_max"]] for s in evaluation.scores.values()])
    assert np.all((values >= 0) & (values <= 1))


@pytest.mark.slow
def test_diff_loss_never_changes_how_inp_former_is_trained(synthetic_root, tmp_path):
    """L_df reaches only the Diff Predictor, and gradients are clipped per part, so
    Filter-Former's INP-Former parts train exactly as with L_df switched off."""

    def model(diff_weight):
        torch.manual_seed(0)
        encoder = build_encoder("tiny_random", pretrained=False)
        return build_model(
            "filterformer", encoder, decoder_depth=8, diff_depth=1, diff_weight=diff_weight
        )

    with_df, _ = run(synthetic_root, tmp_path / "with", model(1.0), epochs=2)
    without_df, _ = run(synthetic_root, tmp_path / "without", model(0.0), epochs=2)
    inp_former = [
        name for name in with_df.trainable_state_dict() if not name.startswith("diff_predictor.")
    ]
    for name in inp_former:
        assert torch.equal(
            with_df.trainable_state_dict()[name], without_df.trainable_state_dict()[name]
        ), name
    predictor = with_df.state_dict()["diff_predictor.head.weight"]
    assert not torch.equal(predictor, without_df.state_dict()["diff_predictor.head.weight"])


@pytest.mark.slow
def test_training_steps_never_read_a_tensor_back_to_the_host(synthetic_root, tmp_path, monkeypatch):
    """No `.item()` or truth test of a tensor in our code while training (each one would stall a
    GPU every step): losses stay on the device until the log is flushed in one copy."""
    import inspect
    from pathlib import Path

    import filterformer

    package = str(Path(filterformer.__file__).parent)
    reads = []

    def record(original):
        def wrapper(tensor, *args):
            caller = inspect.stack()[1].filename
            if caller.startswith(package):
                reads.append(f"{caller}:{inspect.stack()[1].lineno}")
            return original(tensor, *args)

        return wrapper

    model = tiny_model()
    monkeypatch.setattr(torch.Tensor, "item", record(torch.Tensor.item))
    monkeypatch.setattr(torch.Tensor, "__bool__", record(torch.Tensor.__bool__))
    run(synthetic_root, tmp_path, model, epochs=2, log_every=1000)
    assert reads == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bad_step", "kept"),
    [
        (1, "No checkpoint was kept: the loss diverged before the first epoch ended"),
        (4, "checkpoints/last keeps the last good epoch (1, step 2)"),
    ],
)
def test_divergence_message_says_what_the_run_folder_kept(synthetic_root, tmp_path, bad_step, kept):
    with pytest.raises(NonFiniteLossError) as error:
        run(synthetic_root, tmp_path, model=NaNAtStep(tiny_model(), bad_step=bad_step))
    assert kept in str(error.value) and "train.optimizer.lr" in str(error.value)
    assert has_checkpoint(tmp_path / "checkpoints" / "last") == (bad_step > 2)


PAUSE = 0.1  # seconds the save hook waits at each stage of a save (the kill loop)
PLAN = [  # each attempt is killed a moment after the n-th event that matches the pattern
    ("step", 1),  # no checkpoint yet: the next attempt starts from the beginning
    ("last:committed", 1),  # epoch 1 done
    ("best_.*:weights", 1),  # from epoch 1: the improved best_<mode> of epoch 2 half-saved
    ("last:state", 1),  # that best saved; last of epoch 2 written, not committed
    ("last:committed", 1),  # last of epoch 2 current; the files it replaced not yet deleted
    ("step", 1),  # from epoch 2: during step 6, its row logged beyond the checkpoint
    ("last:committed", 1),  # the final last current: only the next start removes old files
]


def weight_scores(model):
    """Scores that are a function of the weights alone (identical in every attempt)."""
    total = sum(float(t.double().sum()) for t in model.trainable_state_dict().values())
    fraction = total * 1e3 - math.floor(total * 1e3)
    scores = {"inp": {"f1_max": fraction}, "filter": {"f1_max": 1.0 - fraction}}
    return Evaluation(scores, {"inp": (0.0, 1.0), "filter": (1.0, 2.0)})


def run_evaluated(root, run_dir, **kwargs):
    """run() evaluated after every epoch, resuming: saves of best_* and last every epoch."""
    return run(
        root,
        run_dir,
        log_every=1,
        eval_every=1,
        evaluator=weight_scores,
        category="synthetic",
        map_statistics=lambda model: {"inp": (0.0, 1.0), "filter": (1.0, 2.0)},
        resume=True,
        **kwargs,
    )


def attempt(root, run_dir, events):
    """The forked process: train, reporting steps and save stages (pausing at each)."""
    torch.set_num_threads(1)

    def at_stage(name, stage):
        events.send(f"{name}:{stage}")
        time.sleep(PAUSE)

    checkpoint.save_hook = at_stage
    run_evaluated(root, run_dir, step_callback=lambda step, row: events.send("step"))
    events.send("done")


def kill_after(process, events, pattern, occurrence, delay):
    """Wait for the ``occurrence``-th event matching ``pattern``, then SIGKILL the attempt
    ``delay`` seconds later.

    Returns False when the attempt finished first.
    """
    seen = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not events.poll(0.5):
            assert process.is_alive(), f"attempt died on its own (exit {process.exitcode})"
            continue
        name = events.recv()
        if name == "done":
            return False
        seen += bool(re.fullmatch(pattern, name))
        if seen == occurrence:
            time.sleep(delay)
            os.kill(process.pid, signal.SIGKILL)
            return True
    pytest.fail("attempt stalled")


def listing(folder):
    """Every file under ``folder``, with the random token of checkpoint file names masked."""
    return sorted(
        re.sub(r"\.[0-9a-f]{12}\.", ".TOKEN.", str(p.relative_to(folder)))
        for p in folder.rglob("*")
        if p.is_file()
    )


@pytest.mark.slow
def test_kill_at_random_instants_then_resume_ends_bit_identical(synthetic_root, tmp_path):
    """kill -9 at random instants (plan: :data:`PLAN`), then resume=true: the run ends with the
    weights, logs and files of one that was never killed, and nothing temporary survives.

    Each attempt trains in a forked process that reports its steps and the stages of its
    checkpoint saves (through the save hook, which also pauses there to widen the window); the
    test kills it with SIGKILL a random moment after a planned event and starts the next
    attempt with resume=true, until one runs through.
    """
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_evaluated(synthetic_root, straight)
    fork = multiprocessing.get_context("fork")
    rng = random.Random(0)
    kills = 0
    for event, occurrence in [*PLAN, (None, None)]:
        receiver, sender = fork.Pipe(duplex=False)
        process = fork.Process(target=attempt, args=(synthetic_root, killed, sender))
        process.start()
        sender.close()
        if event is None:  # the last attempt runs through
            process.join(60)
            assert process.exitcode == 0
            break
        delay = rng.uniform(0, PAUSE if event != "step" else 0.05)
        kills += kill_after(process, receiver, event, occurrence, delay)
        process.join(10)
        receiver.close()
    assert kills == len(PLAN)

    for name in ("last", "best_inp", "best_filter"):
        want, got = (checkpoint_files(f / "checkpoints" / name) for f in (straight, killed))
        assert json.loads(got.meta.read_text())["step"] == json.loads(want.meta.read_text())["step"]
        want_weights, got_weights = load_file(want.weights), load_file(got.weights)
        assert want_weights.keys() == got_weights.keys()
        for tensor, value in want_weights.items():
            assert torch.equal(got_weights[tensor], value), (name, tensor)
    for file in ("train_log.csv", "eval_log.csv", "fusion.json", "map_stats.json"):
        assert (killed / file).read_bytes() == (straight / file).read_bytes(), file
    assert listing(killed) == listing(straight)  # nothing temporary or unfinished is left
