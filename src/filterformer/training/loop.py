"""The training loop: seeded, resumable, NaN-guarded, with periodic evaluation per fusion mode.

Files it keeps in the run folder (docs/architecture.md):

- ``checkpoints/last.*`` after every epoch (weights, metadata, optimiser/scheduler/RNG state);
- ``checkpoints/best_<mode>.*`` whenever an evaluation improves that fusion mode's score;
- ``train_log.csv`` (one row per step) and ``eval_log.csv`` (one row per evaluation and mode),
  both rewritten atomically together with ``last``, so they always match the checkpoint;
- ``fusion.json`` ``{"<category>": "<best mode>"}`` after every evaluation;
- ``map_stats.json`` (validation mean/std per map) at the end.

Resuming loads ``last`` and replays nothing: the data order (a function of seed and epoch),
the augmentations (seeded per epoch and item) and the random states are restored, so an
interrupted and resumed run ends with the same weights as one that ran through.

The step never waits for the device: the losses of each step stay on it and are copied to
the host (one synchronisation) every ``log_every`` steps and at the end of every epoch, where
the NaN guard also looks at them. A non-finite loss is therefore noticed up to ``log_every``
steps late, but always before the epoch's checkpoint or evaluation, and reported with the
exact step where it first appeared. The train set is images, or cached encoder taps
(:class:`TapFeatures`), which skip the frozen encoder. Several processes (torchrun) train one
model with data parallelism (:mod:`filterformer.training.distributed`).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from filterformer.errors import ConfigError, NonFiniteLossError
from filterformer.io import write_csv, write_json
from filterformer.training.checkpoint import checkpoint_files, load_checkpoint, save_checkpoint
from filterformer.training.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    set_loader_epoch,
    training_loader,
    wrap_trainable,
)
from filterformer.training.feature_cache import TapFeatures
from filterformer.training.optim import build_optimizer, optimizer_parameters
from filterformer.training.schedule import WarmupCosine
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

LossStep = Callable[[torch.Tensor], dict[str, torch.Tensor]]
"""A batch on the device (images, or cached taps) -> the model's losses."""


@dataclass(frozen=True)
class OptimizerSettings:
    """Optimiser and learning-rate schedule (values come from the config's ``train.optimizer``)."""

    name: str = "stable_adamw"
    lr: float = 1e-3
    final_lr: float = 1e-4
    warmup_iters: int = 100
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    eps: float = 1e-10
    amsgrad: bool = True
    clip_threshold: float = 1.0


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
    epochs: int,
    batch_size: int,
    optimizer: OptimizerSettings | None = None,
    grad_clip: float | None = 0.1,
    device: str | torch.device = "cpu",
    amp_bf16: bool = False,
    seed: int = 1,
    deterministic: bool = True,
    num_workers: int = 0,
    compile_step: bool = False,
    log_every: int = 50,
    distributed: DistributedContext = SINGLE_PROCESS,
    eval_every: int = 0,
    evaluator: Evaluator | None = None,
    select_metric: str = "f1_max",
    category: str | None = None,
    map_statistics: MapStatistics | None = None,
    resume: bool = False,
    step_callback: StepCallback | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``train_set`` and keep the run's files.

    Args:
        train_set: a Dataset of normalised 3 x h x w images, or the cached encoder taps of
            one (:func:`cache_features`), which the model turns into features with
            ``features_from_taps``.
        checkpoint_meta: identity and config stored with every checkpoint (``model``,
            ``encoder``, ``encoder_weights``, ``config``); a resumed run must match it.
        batch_size: the global batch; with several processes each takes an equal share.
        optimizer: optimiser and warm-up + cosine schedule, stepped every iteration
            (default: INP-Former's StableAdamW settings).
        grad_clip: L2-norm clip before each step, per part of `model.parameter_groups()`
            (INP-Former's parts; the Diff Predictor) so L_df never rescales INP-Former's
            update (None or 0: off).
        amp_bf16: autocast the forward pass to bfloat16 (CUDA only; ignored on CPU).
        deterministic: deterministic torch kernels and no cuDNN autotuning.
        num_workers: DataLoader worker processes (kept alive across epochs).
        compile_step: ``torch.compile`` the step after the encoder (forward and losses).
        log_every: copy the step losses to the host (log rows, NaN guard, progress bar)
            every this many steps, and at the end of every epoch.
        distributed: this process's rank among the torchrun processes; only rank 0 writes
            files and shows progress.
        eval_every: evaluate every this many epochs and after the last one (0: never).
        evaluator: scores per fusion mode; ``select_metric`` picks the score that decides
            ``best_<mode>``; ``category`` names the entry of fusion.json.
        map_statistics: computes map_stats.json at the end (None: not written); when the
            evaluation after the last epoch already measured them, its statistics are used.
        resume: continue from ``checkpoints/last`` if present. Without it, a run folder that
            already holds ``last`` is refused rather than overwritten.
        step_callback: called for every step when its row is logged (monitoring; raising
            from it stops training before the next checkpoint).
    """
    run_dir = Path(run_dir)
    device = torch.device(device)
    optimizer = optimizer or OptimizerSettings()
    main = distributed.is_main
    last = last_checkpoint(run_dir)
    check_run_dir(run_dir, resume)
    set_deterministic(deterministic)
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    if len(train_set) < batch_size:
        raise ConfigError(
            f"batch size {batch_size} is larger than the {len(train_set)} training images; "
            "lower train.batch_size."
        )
    loader = training_loader(
        train_set,
        batch_size=batch_size,
        seed=seed,
        context=distributed,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=generator,
    )
    model.to(device)
    opt = build_optimizer(
        optimizer.name,
        optimizer_parameters(model),
        lr=optimizer.lr,
        betas=optimizer.betas,
        weight_decay=optimizer.weight_decay,
        eps=optimizer.eps,
        amsgrad=optimizer.amsgrad,
        clip_threshold=optimizer.clip_threshold,
    )
    scheduler = WarmupCosine(
        opt,
        base_lr=optimizer.lr,
        final_lr=optimizer.final_lr,
        total_iters=epochs * len(loader),
        warmup_iters=optimizer.warmup_iters,
    )
    log = _Logs(run_dir)
    result = TrainResult(step=0, epoch=0)
    if resume and checkpoint_files(last)[0].exists():
        state = load_checkpoint(
            last, model, expected=checkpoint_meta, with_training_state=True
        ).training_state
        opt.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        result = TrainResult(step=state["step"], epoch=state["epoch"], best=state["best"])
        log.restore(result.step, result.epoch)

    step = wrap_trainable(model, loss_step(model, train_set), distributed)
    if compile_step:
        step = torch.compile(step)
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=amp_bf16 and device.type == "cuda"
    )
    pending = _PendingLosses(distributed)
    bar = tqdm(
        total=epochs * len(loader),
        initial=result.step,
        desc="train",
        disable=not (progress and main),
    )

    def flush() -> None:
        """Copy the pending losses to the host, log them, stop at the first non-finite one."""
        rows = pending.flush()
        bad = next((n for n, row in enumerate(rows) if not _finite(row)), None)
        log.train_rows.extend(rows if bad is None else rows[: bad + 1])
        if rows:
            bar.set_postfix(
                {k: f"{v:.4g}" for k, v in rows[-1].items() if k not in ("step", "epoch")}
            )
        if bad is not None:
            if main:
                log.write()
            bar.close()
            row = rows[bad]
            raise NonFiniteLossError(
                f"training diverged: non-finite loss at step {row['step']} (epoch {row['epoch']}): "
                f"{ {k: v for k, v in row.items() if k not in ('step', 'epoch')} }. "
                f"{last}.safetensors keeps the last good epoch. Lower train.optimizer.lr, "
                "keep train.grad_clip on, or turn train.amp_bf16 off."
            )
        if step_callback is not None:
            for row in rows:
                step_callback(row["step"], row)

    clip_groups = list(model.parameter_groups().values())
    final_stats: MapStats | None = None  # measured by the evaluation of the last epoch, if any
    for epoch in range(result.epoch, epochs):
        started = time.perf_counter()
        model.train()
        set_loader_epoch(loader, epoch)
        for batch in loader:
            lr = opt.param_groups[0]["lr"]
            with autocast:
                losses = step(batch.to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if grad_clip:
                for params in clip_groups:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            scheduler.step()
            result.step += 1
            pending.add({"step": result.step, "epoch": epoch, "lr": lr}, losses)
            bar.update()
            if result.step % log_every == 0:
                flush()
        flush()
        result.epoch = epoch + 1
        result.epoch_seconds.append(time.perf_counter() - started)
        if main:
            due = eval_every and (result.epoch % eval_every == 0 or result.epoch == epochs)
            if evaluator is not None and due:
                evaluation = _evaluate(
                    model, evaluator, select_metric, result, run_dir, checkpoint_meta, log
                )
                if result.epoch == epochs:
                    final_stats = evaluation.map_stats
                result.fusion_mode = _write_fusion(run_dir, category, result.best)
            training_state = {
                "optimizer": opt.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "rng": rng_state(),
                "epoch": result.epoch,
                "best": result.best,
            }
            meta = {**checkpoint_meta, "step": result.step, "epoch": result.epoch}
            save_checkpoint(last, model, meta=meta, training_state=training_state)
            log.write()
        distributed.barrier()
    bar.close()
    if not main:
        return result
    if result.fusion_mode is None and result.best:
        result.fusion_mode = _write_fusion(run_dir, category, result.best)
    if map_statistics is not None:
        model.eval()
        stats = final_stats if final_stats is not None else map_statistics(model)
        write_json(
            run_dir / "map_stats.json", {k: {"mean": m, "std": s} for k, (m, s) in stats.items()}
        )
    return result


def loss_step(model: torch.nn.Module, train_set: Dataset) -> LossStep:
    """The model's losses from a batch of ``train_set``: images, or cached taps."""
    if not isinstance(train_set, TapFeatures):
        return lambda images: model(images)
    grid = train_set.grid

    def from_taps(taps: torch.Tensor) -> dict[str, torch.Tensor]:
        """B x taps x N x C in the storage dtype -> losses (the encoder's dtype is float32)."""
        return model.losses(model.features_from_taps(list(taps.float().unbind(1)), grid))

    return from_taps


def last_checkpoint(run_dir: str | Path) -> Path:
    """The resumable checkpoint of a run folder (its files may not exist yet)."""
    return Path(run_dir) / "checkpoints" / "last"


def check_run_dir(run_dir: str | Path, resume: bool) -> None:
    """Refuse to start over in a folder that holds a trained run, unless resuming it."""
    if checkpoint_files(last_checkpoint(run_dir))[0].exists() and not resume:
        raise ConfigError(
            f"{run_dir}: already holds a trained run (checkpoints/last). Set resume=true to "
            "continue it, or choose another run_dir."
        )


def _evaluate(
    model: torch.nn.Module,
    evaluator: Evaluator,
    select_metric: str,
    result: TrainResult,
    run_dir: Path,
    checkpoint_meta: Mapping[str, Any],
    log: _Logs,
) -> Evaluation:
    """Score every fusion mode; save ``best_<mode>`` where the selection metric improved."""
    model.eval()
    evaluation = evaluator(model)
    model.train()
    stats_meta = {} if evaluation.map_stats is None else {"map_stats": evaluation.map_stats}
    for mode, metrics in evaluation.scores.items():
        if select_metric not in metrics:
            raise ConfigError(
                f"eval.metric={select_metric!r} is not computed; choose one of {sorted(metrics)}."
            )
        log.eval_rows.append({"step": result.step, "epoch": result.epoch, "mode": mode, **metrics})
        score = metrics[select_metric]
        best = result.best.get(mode)
        if math.isfinite(score) and (best is None or score > best["score"]):
            result.best[mode] = {"score": score, "epoch": result.epoch, "step": result.step}
            meta = {
                **checkpoint_meta,
                "step": result.step,
                "epoch": result.epoch,
                "mode": mode,
                "metrics": metrics,
                **stats_meta,
            }
            save_checkpoint(run_dir / "checkpoints" / f"best_{mode}", model, meta=meta)
    return evaluation


def _write_fusion(run_dir: Path, category: str | None, best: Mapping[str, Mapping]) -> str | None:
    """Write fusion.json with the mode whose best score is highest; return that mode."""
    if not best:
        return None
    mode = max(best, key=lambda m: best[m]["score"])
    write_json(run_dir / "fusion.json", {category or "default": mode})
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


class _Logs:
    """train_log.csv and eval_log.csv, kept in memory and written together with ``last``."""

    def __init__(self, run_dir: Path) -> None:
        self.train_file = run_dir / "train_log.csv"
        self.eval_file = run_dir / "eval_log.csv"
        self.train_rows: list[dict[str, Any]] = []
        self.eval_rows: list[dict[str, Any]] = []

    def restore(self, step: int, epoch: int) -> None:
        """Reload the rows up to a resumed checkpoint, dropping later ones."""
        self.train_rows = [r for r in _read_csv(self.train_file) if int(r["step"]) <= step]
        self.eval_rows = [r for r in _read_csv(self.eval_file) if int(r["epoch"]) <= epoch]

    def write(self) -> None:
        write_csv(self.train_file, self.train_rows, _fieldnames(self.train_rows))
        if self.eval_rows:
            write_csv(self.eval_file, self.eval_rows, _fieldnames(self.eval_rows))


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _fieldnames(rows: list[dict[str, Any]]) -> list[str]:
    """Union of the rows' keys in first-seen order."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)
