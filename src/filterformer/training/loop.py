"""The training loop: seeded, resumable, NaN-guarded, with periodic evaluation per fusion mode.

Files it keeps in the run folder (docs/architecture.md):

- ``checkpoints/last`` after every epoch (weights, metadata, optimiser/scheduler/RNG state),
  saved as one unit (:mod:`filterformer.training.checkpoint`);
- ``checkpoints/best_<mode>`` whenever an evaluation improves that fusion mode's score;
- ``train_log.csv`` (one row per step) and ``eval_log.csv`` (one row per evaluation and mode),
  appended as rows come (:mod:`filterformer.training.logs`);
- ``fusion.json`` ``{"<category>": "<best mode>"}`` after every evaluation (one entry per
  category of a multi-class model, all with its one mode);
- ``map_stats.json`` (validation mean/std per map) at the end.

The process holds the run folder's lock while it trains (:mod:`filterformer.lock`), and on
start deletes what an interrupted one left (temporary files, unfinished checkpoint files).

Resuming loads ``last`` and replays nothing: the data order (a function of seed and epoch),
the augmentations (seeded per epoch and item) and the random states are restored, and the
logs are cut back to their length at that checkpoint, so an interrupted and resumed run ends
with the same weights and logs as one that ran through. A run killed before its first
checkpoint starts again from the beginning.

The step never waits for the device: the losses of each step stay on it and are copied to
the host (one synchronisation) every ``log_every`` steps and at the end of every epoch, where
the NaN guard also looks at them. A non-finite loss is therefore noticed up to ``log_every``
steps late, but always before the epoch's checkpoint or evaluation, and reported with the
exact step where it first appeared. The train set is images, or cached encoder taps
(:class:`TapFeatures`), which skip the frozen encoder. Several processes (torchrun) train one
model with data parallelism (:mod:`filterformer.training.distributed`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from filterformer.errors import CheckpointError, ConfigError, NonFiniteLossError
from filterformer.io import remove_partials, write_json
from filterformer.lock import lock_run
from filterformer.manifest import signing
from filterformer.progress import progress_bar
from filterformer.training.checkpoint import (
    RESUME_FIX,
    has_checkpoint,
    load_checkpoint,
    metadata_file,
    remove_stale_files,
    save_checkpoint,
)
from filterformer.training.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    set_loader_epoch,
    training_loader,
    wrap_trainable,
)
from filterformer.training.feature_cache import TapFeatures
from filterformer.training.logs import CsvLog, check_logs
from filterformer.training.optim import build_optimizer, optimizer_parameters
from filterformer.training.schedule import Schedule
from filterformer.training.seed import rng_state, seed_everything, set_deterministic, set_rng_state

MapStats = dict[str, tuple[float, float]]
"""{map name: (validation mean, validation std)}: what fusion normalises by."""


@dataclass
class Evaluation:
    """One periodic evaluation: scores per fusion mode and the map statistics they used."""

    scores: dict[str, dict[str, float]]
    """{fusion mode: {metric: value}}; higher is better for the selection metric."""
    map_stats: MapStats | None = None
    """Statistics of these weights' maps; stored with each best checkpoint, since the fused
    maps of a checkpoint are only right with the statistics of that checkpoint."""


Evaluator = Callable[[torch.nn.Module], Evaluation]
MapStatistics = Callable[[torch.nn.Module], MapStats]

StepCallback = Callable[[int, dict[str, float]], None]
"""Called with every step's 1-based number and log row, in order, when the row is logged."""

EpochCallback = Callable[[int, int, Mapping[str, Mapping[str, float]] | None], None]
"""Called on the main process after each epoch's checkpoint with the epoch, the step and the
scores per fusion mode of the evaluation that epoch ran (None when none ran)."""

LossStep = Callable[[torch.Tensor], dict[str, torch.Tensor]]
"""A batch on the device (images, or cached taps) -> the model's losses."""


@dataclass(frozen=True)
class OptimizerSettings:
    """Optimiser and learning-rate schedule: the config's ``train.optimizer`` (its defaults live
    in the configs only; :func:`filterformer.runs.settings.train_settings` builds this).

    ``schedule`` (:mod:`filterformer.training.schedule`): ``warmup_cosine`` reads ``final_lr``
    and ``warmup_iters``; ``warmup`` and ``sgdr`` warm up over ``warmup_epochs``; ``sgdr``
    restarts every ``restart_epochs`` (x ``restart_mult`` each time) down to
    ``min_lr_scale * lr``.
    """

    name: str
    lr: float
    final_lr: float
    warmup_iters: int
    betas: tuple[float, float]
    weight_decay: float
    eps: float
    amsgrad: bool
    clip_threshold: float
    schedule: str
    warmup_epochs: float
    restart_epochs: float
    restart_mult: int
    min_lr_scale: float

    def build_schedule(
        self, optimizer: torch.optim.Optimizer, epochs: int, iters_per_epoch: int
    ) -> Schedule:
        """This schedule over ``epochs`` of ``iters_per_epoch`` optimiser steps."""
        sgdr = self.schedule == "sgdr"
        warmup_epochs = self.schedule in ("warmup", "sgdr")
        return Schedule(
            optimizer,
            self.schedule,
            base_lr=self.lr,
            final_lr=self.lr * self.min_lr_scale if sgdr else self.final_lr,
            total_iters=epochs * iters_per_epoch,
            warmup_iters=(
                round(self.warmup_epochs * iters_per_epoch) if warmup_epochs else self.warmup_iters
            ),
            restart_iters=round(self.restart_epochs * iters_per_epoch),
            restart_mult=self.restart_mult,
        )


@dataclass(frozen=True)
class TrainSettings:
    """How to train: the config's ``train`` section, ``seed``, ``device``, ``resume`` and
    ``progress``, built in one place (:func:`filterformer.runs.settings.train_settings`); the
    defaults live in the configs only."""

    epochs: int
    batch_size: int
    """The global batch; with several processes each takes an equal share."""
    optimizer: OptimizerSettings
    """Optimiser and learning-rate schedule, stepped every iteration."""
    grad_clip: float | None
    """L2-norm clip before each step, per part of ``model.parameter_groups()`` (INP-Former's
    parts; the Diff Predictor) so L_df never rescales INP-Former's update (None or 0: off)."""
    device: str | torch.device
    amp_bf16: bool
    """Autocast the forward pass to bfloat16 (CUDA only; ignored on CPU)."""
    seed: int
    deterministic: bool
    """Deterministic torch kernels and no cuDNN autotuning."""
    num_workers: int
    """DataLoader worker processes (kept alive across epochs)."""
    compile_step: bool
    """``torch.compile`` the step after the encoder (forward and losses)."""
    log_every: int
    """Copy the step losses to the host (log rows, NaN guard, progress bar) every this many
    steps, and at the end of every epoch."""
    resume: bool
    """Continue from ``checkpoints/last`` if present. Without it, a run folder that already
    holds ``last`` is refused rather than overwritten."""
    progress: bool


@dataclass(frozen=True)
class EvaluationSettings:
    """When training evaluates, how it picks the best checkpoints, and what it writes at the end."""

    every: int = 0
    """Evaluate every this many epochs and after the last one (0: never)."""
    evaluator: Evaluator | None = None
    """Scores per fusion mode."""
    select_metric: str = "f1_max"
    """The score that decides ``best_<mode>``."""
    category: str | Sequence[str] | None = None
    """The entry of fusion.json (a model of several categories: one entry each)."""
    map_statistics: MapStatistics | None = None
    """Computes map_stats.json at the end (None: not written); when the evaluation after the
    last epoch already measured them, its statistics are used."""


@dataclass
class TrainResult:
    """Where training ended and the best evaluation score per fusion mode."""

    step: int
    epoch: int
    best: dict[str, dict[str, Any]] = field(default_factory=dict)
    """mode -> {"score": value of the selection metric, "epoch": e, "step": s}."""
    fusion_mode: str | None = None
    """The mode with the highest best score (None without evaluation)."""
    epoch_seconds: list[float] = field(default_factory=list)
    """Wall time of each epoch trained in this call (training only, without evaluation)."""


def train(
    model: torch.nn.Module,
    train_set: Dataset,
    *,
    run_dir: str | Path,
    checkpoint_meta: Mapping[str, Any],
    settings: TrainSettings,
    evaluation: EvaluationSettings | None = None,
    distributed: DistributedContext = SINGLE_PROCESS,
    step_callback: StepCallback | None = None,
    epoch_callback: EpochCallback | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_set`` and keep the run's files: :class:`Trainer` in one call."""
    trainer = Trainer(
        model,
        train_set,
        run_dir,
        checkpoint_meta,
        settings,
        evaluation,
        distributed,
        step_callback,
        epoch_callback,
    )
    return trainer.run()


class Trainer:
    """One training run into a run folder, in parts: set-up (here), resume or a fresh start,
    the epochs, evaluation with the best checkpoints, the checkpoint of each epoch, the end.

    Args:
        train_set: a Dataset of normalised 3 x h x w images, or the cached encoder taps of
            one (:func:`cache_features`), which the model turns into features with
            ``features_from_taps``.
        checkpoint_meta: identity and config stored with every checkpoint (``model``,
            ``encoder``, ``encoder_weights``, ``config``); a resumed run must match it.
        distributed: this process's rank among the torchrun processes; only rank 0 writes
            files (and holds the run folder's lock) and shows progress.
        step_callback: called for every step when its row is logged (monitoring; raising
            from it stops training before the next checkpoint).
        epoch_callback: called after every epoch's checkpoint (the curves PNG, trackers).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        train_set: Dataset,
        run_dir: str | Path,
        checkpoint_meta: Mapping[str, Any],
        settings: TrainSettings,
        evaluation: EvaluationSettings | None = None,
        distributed: DistributedContext = SINGLE_PROCESS,
        step_callback: StepCallback | None = None,
        epoch_callback: EpochCallback | None = None,
    ) -> None:
        self.model, self.train_set = model, train_set
        self.run_dir = Path(run_dir)
        self.last = last_checkpoint(self.run_dir)
        self.meta = checkpoint_meta
        self.settings, self.evaluation = settings, evaluation or EvaluationSettings()
        self.distributed, self.main = distributed, distributed.is_main
        self.step_callback, self.epoch_callback = step_callback, epoch_callback
        self.scores: dict[str, dict[str, float]] | None = None  # this epoch's evaluation
        self.device = torch.device(settings.device)
        check_run_dir(self.run_dir, settings.resume)
        check_batch_size(len(train_set), settings.batch_size)
        if self.main:
            lock_run(self.run_dir)
            remove_partials(self.run_dir, recursive=False)
            remove_stale_files(self.last.parent)
        set_deterministic(settings.deterministic)
        seed_everything(settings.seed)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.loader = training_loader(
            train_set,
            batch_size=settings.batch_size,
            seed=settings.seed,
            context=distributed,
            num_workers=settings.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=self.generator,
        )
        model.to(self.device)
        self.optimizer, self.scheduler = self._optimizer()
        self.logs = {
            "train": CsvLog(self.run_dir / "train_log.csv"),
            "eval": CsvLog(self.run_dir / "eval_log.csv"),
        }
        self.result = TrainResult(step=0, epoch=0)
        self.kept: tuple[int, int] | None = None  # (epoch, step) of `last`, once there is one
        self.final_stats: MapStats | None = None  # measured by the last epoch's evaluation
        self.pending = _PendingLosses(distributed)

    def run(self) -> TrainResult:
        """Train from the start or from ``last`` to the last epoch; write the end's files."""
        self._resume_or_start()
        settings = self.settings
        step = wrap_trainable(self.model, loss_step(self.model, self.train_set), self.distributed)
        if settings.compile_step:
            step = torch.compile(step)
        self.bar = progress_bar(
            total=settings.epochs * len(self.loader),
            initial=self.result.step,
            desc="train",
            unit="step",
            enabled=settings.progress and self.main,
        )
        for epoch in range(self.result.epoch, settings.epochs):
            started = time.perf_counter()
            self._train_epoch(epoch, step)
            self.result.epoch = epoch + 1
            self.result.epoch_seconds.append(time.perf_counter() - started)
            if self.main:
                self._evaluate_if_due()
                self._save_last()
                if self.epoch_callback is not None:
                    self.epoch_callback(self.result.epoch, self.result.step, self.scores)
                self.scores = None
            self.kept = (self.result.epoch, self.result.step)
            self.distributed.barrier()
        self.bar.close()
        if self.main:
            self._write_end_files()
        return self.result

    def _optimizer(self) -> tuple[torch.optim.Optimizer, Schedule]:
        """The optimiser of the trainable parameters and its learning-rate schedule."""
        settings = self.settings.optimizer
        optimizer = build_optimizer(
            settings.name,
            optimizer_parameters(self.model),
            lr=settings.lr,
            betas=settings.betas,
            weight_decay=settings.weight_decay,
            eps=settings.eps,
            amsgrad=settings.amsgrad,
            clip_threshold=settings.clip_threshold,
        )
        return optimizer, settings.build_schedule(optimizer, self.settings.epochs, len(self.loader))

    def _resume_or_start(self) -> None:
        """Restore ``last`` (resume) with the logs cut back to it, or start with no logs."""
        sizes = {"train": 0, "eval": 0}
        if self.settings.resume and has_checkpoint(self.last):
            loaded = load_checkpoint(
                self.last, self.model, expected=self.meta, with_training_state=True, fix=RESUME_FIX
            )
            state = loaded.training_state
            try:
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
                self.generator.set_state(state["generator"])
                set_rng_state(state["rng"])
                self.result = TrainResult(
                    step=state["step"], epoch=int(state["epoch"]), best=dict(state["best"])
                )
                sizes = state.get("logs")  # None: saved before logs were appended; keep them
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
                raise CheckpointError(
                    f"{loaded.files.state}: the training state does not fit this run "
                    f"({type(err).__name__}: {err}). {RESUME_FIX}"
                ) from None
            self.kept = (self.result.epoch, self.result.step)
            if self.main:
                check_logs(self.run_dir, loaded.meta.get("logs"), RESUME_FIX)
        if self.main and sizes is not None:
            for name, log in self.logs.items():
                log.cut(sizes[name])

    def _train_epoch(self, epoch: int, step: LossStep) -> None:
        """One pass over the loader: forward, backward, clipped optimiser step, schedule."""
        model, optimizer, settings = self.model, self.optimizer, self.settings
        autocast = torch.autocast(
            self.device.type,
            dtype=torch.bfloat16,
            enabled=settings.amp_bf16 and self.device.type == "cuda",
        )
        clip_groups = list(model.parameter_groups().values())
        model.train()
        set_loader_epoch(self.loader, epoch)
        for batch in self.loader:
            lr = optimizer.param_groups[0]["lr"]
            with autocast:
                losses = step(batch.to(self.device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if settings.grad_clip:
                for params in clip_groups:
                    torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            self.scheduler.step()
            self.result.step += 1
            self.pending.add({"step": self.result.step, "epoch": epoch, "lr": lr}, losses)
            self.bar.update()
            if self.result.step % settings.log_every == 0:
                self._flush()
        self._flush()

    def _flush(self) -> None:
        """Copy the pending losses to the host, log them, stop at the first non-finite one."""
        rows = self.pending.flush()
        bad = next((n for n, row in enumerate(rows) if not _finite(row)), None)
        if self.main:
            self.logs["train"].append(rows if bad is None else rows[: bad + 1])
        if rows:
            self.bar.set_postfix(
                {k: f"{v:.4g}" for k, v in rows[-1].items() if k not in ("step", "epoch")}
            )
        if bad is not None:
            self.bar.close()
            raise NonFiniteLossError(_divergence_message(rows[bad], self.kept))
        if self.step_callback is not None:
            for row in rows:
                self.step_callback(row["step"], row)

    def _evaluate_if_due(self) -> None:
        """Evaluate when due: log the scores, keep improved ``best_<mode>``, write fusion.json."""
        evaluation, result = self.evaluation, self.result
        due = evaluation.every and (
            result.epoch % evaluation.every == 0 or result.epoch == self.settings.epochs
        )
        if evaluation.evaluator is None or not due:
            return
        self.model.eval()
        scored = evaluation.evaluator(self.model)
        self.scores = scored.scores
        self.model.train()
        for metrics in scored.scores.values():
            if evaluation.select_metric not in metrics:
                raise ConfigError(
                    f"eval.metric={evaluation.select_metric!r} is not computed; choose one of "
                    f"{sorted(metrics)}."
                )
        self.logs["eval"].append(
            [
                {"step": result.step, "epoch": result.epoch, "mode": mode, **metrics}
                for mode, metrics in scored.scores.items()
            ]
        )
        for mode, metrics in scored.scores.items():
            self._keep_if_best(mode, metrics, scored.map_stats)
        if result.epoch == self.settings.epochs:
            self.final_stats = scored.map_stats
        result.fusion_mode = _write_fusion(self.run_dir, evaluation.category, result.best)

    def _keep_if_best(
        self, mode: str, metrics: Mapping[str, float], map_stats: MapStats | None
    ) -> None:
        """Save ``best_<mode>`` (with its metrics and map statistics) if the score improved."""
        result, score = self.result, metrics[self.evaluation.select_metric]
        best = result.best.get(mode)
        if not math.isfinite(score) or (best is not None and score <= best["score"]):
            return
        result.best[mode] = {"score": score, "epoch": result.epoch, "step": result.step}
        meta = {**self.meta, "step": result.step, "epoch": result.epoch, "mode": mode}
        meta["metrics"] = metrics
        if map_stats is not None:
            meta["map_stats"] = map_stats
        best_file = self.last.with_name(f"best_{mode}")
        with signing(self.run_dir, metadata_file(best_file)):
            save_checkpoint(best_file, self.model, meta=meta)

    def _save_last(self) -> None:
        """Save ``last`` with everything resuming needs, the logs' lengths included."""
        result = self.result
        training_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "rng": rng_state(),
            "epoch": result.epoch,
            "best": result.best,
            "logs": {name: log.size() for name, log in self.logs.items()},
        }
        meta = {**self.meta, "step": result.step, "epoch": result.epoch}
        meta["logs"] = {log.path.name: log.record() for log in self.logs.values()}
        with signing(self.run_dir, metadata_file(self.last)):
            save_checkpoint(self.last, self.model, meta=meta, training_state=training_state)

    def _write_end_files(self) -> None:
        """fusion.json (when evaluations found a best mode) and map_stats.json."""
        result, evaluation = self.result, self.evaluation
        if result.fusion_mode is None and result.best:
            result.fusion_mode = _write_fusion(self.run_dir, evaluation.category, result.best)
        if evaluation.map_statistics is None:
            return
        self.model.eval()
        stats = self.final_stats
        if stats is None:
            stats = evaluation.map_statistics(self.model)
        with signing(self.run_dir, self.run_dir / "map_stats.json"):
            write_json(
                self.run_dir / "map_stats.json",
                {k: {"mean": m, "std": s} for k, (m, s) in stats.items()},
            )


def loss_step(model: torch.nn.Module, train_set: Dataset) -> LossStep:
    """The model's losses from a batch of ``train_set``: images, or cached taps."""
    if not isinstance(train_set, TapFeatures):
        return lambda images: model(images)
    grid = train_set.grid

    def from_taps(taps: torch.Tensor) -> dict[str, torch.Tensor]:
        """B x taps x N x C in the storage dtype -> losses (the encoder's dtype is float32)."""
        return model.losses(model.features_from_taps(list(taps.float().unbind(1)), grid))

    return from_taps


def check_batch_size(images: int, batch_size: int) -> None:
    """Refuse a batch larger than the training set (no step could be made)."""
    if images < batch_size:
        raise ConfigError(
            f"batch size {batch_size} is larger than the {images} training images; lower "
            "train.batch_size."
        )


def last_checkpoint(run_dir: str | Path) -> Path:
    """The resumable checkpoint of a run folder (it may not exist yet)."""
    return Path(run_dir) / "checkpoints" / "last"


def check_run_dir(run_dir: str | Path, resume: bool) -> None:
    """Refuse to start over in a folder that holds a trained run, unless resuming it."""
    if has_checkpoint(last_checkpoint(run_dir)) and not resume:
        raise ConfigError(
            f"{run_dir}: already holds a trained run (checkpoints/last). Set resume=true to "
            "continue it, or choose another run_dir."
        )


def _divergence_message(row: Mapping[str, Any], kept: tuple[int, int] | None) -> str:
    """What diverged, what the run folder kept of the training, and what to change."""
    losses = {k: v for k, v in row.items() if k not in ("step", "epoch")}
    fix = "lower train.optimizer.lr, keep train.grad_clip on, or turn train.amp_bf16 off"
    if kept is None:
        outcome = (
            "No checkpoint was kept: the loss diverged before the first epoch ended. Train "
            f"again from scratch (resume=false; the same run_dir is fine) and {fix}."
        )
    else:
        outcome = (
            f"checkpoints/last keeps the last good epoch ({kept[0]}, step {kept[1]}). To train "
            f"on, {fix}, in a new run_dir (resuming repeats the same steps)."
        )
    return (
        f"training diverged: non-finite loss at step {row['step']} (epoch {row['epoch']}): "
        f"{losses}. {outcome}"
    )


def _write_fusion(
    run_dir: Path, category: str | Sequence[str] | None, best: Mapping[str, Mapping]
) -> str | None:
    """Write fusion.json with the mode whose best score is highest; return that mode."""
    if not best:
        return None
    mode = max(best, key=lambda m: best[m]["score"])
    keys = [category or "default"] if category is None or isinstance(category, str) else category
    with signing(run_dir, run_dir / "fusion.json"):
        write_json(run_dir / "fusion.json", dict.fromkeys(keys, mode))
    return mode


class _PendingLosses:
    """Each step's losses, kept on the device until :meth:`flush` copies them all at once."""

    def __init__(self, distributed: DistributedContext) -> None:
        self.distributed = distributed
        self.rows: list[dict[str, Any]] = []
        self.values: list[torch.Tensor] = []
        self.names: list[str] = []

    def add(self, row: dict[str, Any], losses: Mapping[str, torch.Tensor]) -> None:
        """Record a step's ``row`` (step, epoch, lr) and its losses (no host synchronisation)."""
        self.names = list(losses)
        self.rows.append(row)
        self.values.append(torch.stack([value.detach().float() for value in losses.values()]))

    def flush(self) -> list[dict[str, Any]]:
        """The pending rows with their losses (averaged over the ranks), and forget them."""
        if not self.rows:
            return []
        values = self.distributed.mean(torch.stack(self.values)).cpu().tolist()
        rows = [
            {**row, **dict(zip(self.names, step_values, strict=True))}
            for row, step_values in zip(self.rows, values, strict=True)
        ]
        self.rows, self.values = [], []
        return rows


def _finite(row: Mapping[str, Any]) -> bool:
    return all(math.isfinite(value) for value in row.values())
