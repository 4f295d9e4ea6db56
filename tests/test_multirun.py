"""Categories in parallel: one ff-train multirun gives one complete run folder per category."""

import subprocess
import sys

import pytest
import yaml

from filterformer.training.checkpoint import checkpoint_files

pytestmark = pytest.mark.slow  # every test trains through a ff-train process


def multirun(tmp_path, overrides, *launcher):
    """ff-train -m over two synthetic categories, in a fresh process as a user would run it."""
    command = [
        sys.executable,
        "-m",
        "filterformer.cli.train",
        "-m",
        *launcher,
        *overrides,
        "category.name=alpha,beta",
        f"run_dir={tmp_path}/runs/${{category.name}}",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def assert_one_run_per_category(tmp_path):
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["alpha", "beta"]
    for name in ("alpha", "beta"):
        config = yaml.safe_load((runs / name / "config.yaml").read_text())
        assert config["category"]["name"] == name
        assert config["data"]["root"] == str(runs / name / "data")
        assert (runs / name / "data" / name / "train").is_dir()
        files = checkpoint_files(runs / name / "checkpoints" / "last")
        assert all(file.is_file() for file in files)  # weights, metadata, training state
        assert len((runs / name / "train_log.csv").read_text().splitlines()) == 2  # header + step


def test_multirun_trains_each_category_into_its_own_run_folder(tmp_path, tiny_demo_overrides):
    multirun(tmp_path, tiny_demo_overrides)
    assert_one_run_per_category(tmp_path)


def test_joblib_launcher_trains_the_categories_in_parallel_processes(tmp_path, tiny_demo_overrides):
    multirun(tmp_path, tiny_demo_overrides, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert_one_run_per_category(tmp_path)
