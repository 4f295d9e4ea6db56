"""Training you can watch: the curves PNG of the run folder, and each experiment tracker read
back with its own reader (TensorBoard's event files, MLflow's local store; wandb's offline
records have no Python reader any more, so its API calls are recorded and a real offline run
only checked for its files).
A tracker whose package is missing is skipped here, and refused by ff-train in one line."""

from __future__ import annotations

import csv
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from filterformer.errors import ConfigError
from filterformer.training.trackers import Tracker, check_tracker, make_tracker
from filterformer.training.watch import CURVES_FILE, EVAL_LOG, TRAIN_LOG, TrainingWatch

STEPS = [
    {"step": s, "epoch": (s - 1) // 3, "lr": 1e-3 / s, "loss": 2.0 / s, "sm": 1.0 / s}
    for s in range(1, 7)
]
EVALS = [
    {"step": 3, "epoch": 1, "mode": "inp", "f1_max": 0.25, "au_pro": 0.1},
    {"step": 3, "epoch": 1, "mode": "filter", "f1_max": 0.30, "au_pro": 0.2},
    {"step": 6, "epoch": 2, "mode": "inp", "f1_max": 0.35, "au_pro": 0.3},
    {"step": 6, "epoch": 2, "mode": "filter", "f1_max": 0.40, "au_pro": 0.4},
]


def _write_log(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _watch_two_epochs(run_dir: Path, tracker: Tracker) -> TrainingWatch:
    """Feed a watch what two epochs of training would: config, steps, evaluations, end."""
    watch = TrainingWatch(run_dir, "f1_max", "filterformer/bottles", tracker)
    watch.start({"train.epochs": 2, "model.name": "filterformer", "input.resize": [28, 42]})
    for epoch in (1, 2):
        rows = [r for r in STEPS if r["epoch"] == epoch - 1]
        for row in rows:
            watch.steps(row["step"], row)
        _write_log(run_dir / TRAIN_LOG, [r for r in STEPS if r["step"] <= rows[-1]["step"]])
        evals = [r for r in EVALS if r["epoch"] == epoch]
        _write_log(run_dir / EVAL_LOG, [r for r in EVALS if r["epoch"] <= epoch])
        scores = {r["mode"]: {"f1_max": r["f1_max"], "au_pro": r["au_pro"]} for r in evals}
        watch.epoch(epoch, rows[-1]["step"], scores)
    overlay = np.zeros((8, 10, 3), dtype=np.uint8)
    watch.finish({"best/filter/f1_max": 0.4}, [("overlay/bad_000", overlay)])
    return watch


def test_curves_show_each_loss_the_lr_and_the_selection_metric_per_mode(tmp_path):
    watch = _watch_two_epochs(tmp_path, Tracker())
    assert (tmp_path / CURVES_FILE).is_file()
    losses, lr, metric = watch.figure().axes
    assert [line.get_label() for line in losses.get_lines()] == ["loss", "sm"]
    assert list(losses.get_lines()[0].get_ydata()) == [2.0 / s for s in range(1, 7)]
    assert list(lr.get_lines()[0].get_xdata()) == [1, 2, 3, 4, 5, 6]
    inp, filter_ = metric.get_lines()
    assert inp.get_label() == "fusion mode inp" and list(filter_.get_ydata()) == [30.0, 40.0]
    assert list(filter_.get_xdata()) == [1.0, 2.0]  # per epoch


def test_a_tracker_whose_package_is_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ConfigError, match=r'pip install "filterformer\[wandb\]"'):
        check_tracker({"kind": "wandb"})
    with pytest.raises(ConfigError, match="logger.kind='comet' is unknown"):
        check_tracker({"kind": "comet"})


def _needs(package: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(package) is None, reason=f"{package} not installed"
    )


@_needs("tensorboard")
def test_tensorboard_events_hold_losses_lr_evaluations_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _watch_two_epochs(tmp_path, make_tracker({"kind": "tensorboard"}, tmp_path, "bottles"))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 7))
    assert loss[-1].value == pytest.approx(2.0 / 6)
    assert events.Scalars("train/lr")[0].value == pytest.approx(1e-3)
    assert [e.value for e in events.Scalars("eval/filter/f1_max")] == pytest.approx([0.3, 0.4])
    assert events.Scalars("best/filter/f1_max")[0].value == pytest.approx(0.4)
    assert {"training_curves", "overlay/bad_000"} <= set(tags["images"])
    assert any("config" in tag for tag in tags["tensors"])


@_needs("mlflow")
def test_mlflow_local_store_holds_params_metrics_and_images(tmp_path):
    from mlflow.tracking import MlflowClient

    _watch_two_epochs(tmp_path, make_tracker({"kind": "mlflow"}, tmp_path, "bottles"))
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("filterformer")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "bottles" and run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "filterformer"
    assert run.data.params["input.resize"] == "[28, 42]"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, 7))
    assert run.data.metrics["eval/filter/f1_max"] == pytest.approx(0.4)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert any(path.startswith("training_curves") for path in artifacts)


class _FakeWandb(types.ModuleType):
    """Records what a tracker hands to wandb's API (init, config, log, Image, finish)."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.calls: list[tuple] = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        run = types.SimpleNamespace(config=types.SimpleNamespace(update=self._config))
        run.log = lambda values, step: self.calls.append(("log", step, values))
        run.finish = lambda: self.calls.append(("finish",))
        return run

    def _config(self, values):
        self.calls.append(("config", values))

    def Image(self, array):  # noqa: N802 (wandb's name)
        return ("image", array.shape)


def test_wandb_gets_config_steps_evaluations_and_images_offline_by_default(tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    _watch_two_epochs(tmp_path, make_tracker({"kind": "wandb"}, tmp_path, "bottles"))
    (_, init), (_, config), *logs, finish = fake.calls
    assert init == {
        "project": "filterformer",
        "name": "bottles",
        "dir": str(tmp_path),
        "mode": "offline",
    }
    assert config["input.resize"] == "[28, 42]" and finish == ("finish",)
    steps = [(step, values) for _, step, values in logs]
    assert [s for s, v in steps if "train/loss" in v] == list(range(1, 7))
    assert (
        6,
        {
            "eval/filter/f1_max": 0.4,
            "eval/filter/au_pro": 0.4,
            "eval/inp/f1_max": 0.35,
            "eval/inp/au_pro": 0.3,
            "epoch": 2,
        },
    ) in steps
    assert any(v.get("training_curves", ("",))[0] == "image" for _, v in steps)


@_needs("wandb")
def test_a_real_wandb_offline_run_keeps_its_files_in_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    _watch_two_epochs(tmp_path, make_tracker({"kind": "wandb"}, tmp_path, "bottles"))
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    (records,) = folder.glob("run-*.wandb")  # what `wandb sync` uploads
    assert records.stat().st_size > 0
    assert list((folder / "files" / "media" / "images").glob("training_curves_*.png"))
