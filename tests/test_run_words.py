"""Words at the end of a run and before it: what was chosen, on which images, what its score
means and the next command; a warning when photos would be blown up; missing paths at once."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from hydra import compose, initialize_config_dir

from filterformer.evaluation.thresholds import Threshold
from filterformer.runs.calibrate import Calibration
from filterformer.runs.train import TrainOutcome, describe_outcome, resolve_config
from filterformer.training.loop import TrainResult

CONFIGS = Path(__file__).parents[1] / "configs"


def _outcome(selection_split: str, test_split: str | None) -> TrainOutcome:
    result = TrainResult(step=45, epoch=15, fusion_mode="filter")
    result.best = {"filter": {"score": 0.4612, "epoch": 10, "step": 30}}
    threshold = Threshold(0.4071, "mean_std", {"k": 3.0}, "validation")
    return TrainOutcome(
        Path("/elsewhere/runs/bottles"),
        result,
        [Calibration("filter", threshold)],
        selection_split,
        "f1_max",
        test_split,
    )


def test_the_last_line_says_what_was_chosen_on_what_and_what_to_run_next():
    text = describe_outcome(_outcome("validation_pseudo", "test_public"))
    assert "synthetic defects pasted in (no test image was used)" in text
    assert "epoch 10 and the 'filter' map" in text
    assert "f1_max 46.1 % there: a guide for the choice, not a test result" in text
    assert "Threshold 0.4071 (mean + 3 standard deviations of the held-out good" in text
    assert text.endswith(
        "Next: ff-eval --run /elsewhere/runs/bottles (scores the test_public images)."
    )
    assert "optimistic" not in text
    chosen_on_test = describe_outcome(_outcome("test_public", None))
    assert (
        "the test images themselves, so ff-eval's numbers on them are optimistic" in chosen_on_test
    )
    assert chosen_on_test.endswith(
        "ff-predict --run /elsewhere/runs/bottles --images DIR --out DIR."
    )


def test_photos_blown_up_more_than_twice_are_warned_about(tmp_path, caplog):
    (tmp_path / "good").mkdir()
    for index in range(4):
        cv2.imwrite(str(tmp_path / "good" / f"{index}.png"), np.zeros((60, 80, 3), np.uint8))
    overrides = ["data=folder", f"data.train_dir={tmp_path / 'good'}", "encoder=tiny_random"]
    overrides += ["encoder.pretrained=false", f"run_dir={tmp_path / 'run'}"]
    with initialize_config_dir(str(CONFIGS), version_base=None):
        big = compose("train", overrides=[*overrides, "input.resize=[224,224]"])
        fine = compose("train", overrides=[*overrides, "input.resize=[70,70]"])
    with caplog.at_level(logging.WARNING, logger="filterformer"):
        resolve_config(big, quiet=False)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # short_side: 224 x 308 (298.7 rounded up to the 14 px patch) for 60 x 80 photos
    assert "3.9x the training images (60 x 80)" in warning and "input.resize=[70,84]" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="filterformer"):
        resolve_config(fine, quiet=False)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_a_missing_folder_is_one_line_before_torch_is_imported(tmp_path):
    code = (
        "import sys; sys.argv = ['ff-train', 'data=folder', 'data.train_dir=nope/good']\n"
        "from filterformer.cli.train import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "ff-train: error: data.train_dir=nope/good: folder not found. Check the path."
    )
    assert time.perf_counter() - started < 60  # generous: no torch, no data


def test_loader_workers_are_capped_at_the_cores_available(monkeypatch):
    from filterformer.runs import settings

    monkeypatch.setattr(settings, "available_cores", lambda: 2)
    assert settings.loader_workers(8) == 2  # CPR's 8 on a 2-core machine
    assert settings.loader_workers(1) == 1 and settings.loader_workers(0) == 0


def test_progress_bars_only_on_a_terminal(monkeypatch):
    import io

    from filterformer.progress import progress_bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: no carriage returns
    assert progress_bar(range(3), desc="predict").disable
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress_bar(range(3), desc="predict")
    assert not bar.disable and bar.total == 3  # one bar with its total
    assert progress_bar(range(3), desc="predict", enabled=False).disable  # --no-progress
