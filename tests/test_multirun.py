"""Categories in parallel: one ff-train multirun gives one complete run folder per category."""

import sys

import pytest
import torch
import yaml

from filterformer.cli.train import main as train_main
from filterformer.training.checkpoint import checkpoint_files

pytestmark = pytest.mark.slow  # every test trains two categories


def multirun(monkeypatch, tmp_path, overrides, *launcher):
    """ff-train -m over two synthetic categories, started in ``tmp_path`` (in this process:
    the basic launcher runs the jobs here, the joblib launcher in its worker processes)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "ff-train",
            "-m",
            *launcher,
            *overrides,
            "category.name=alpha,beta",
            f"run_dir={tmp_path}/runs/${{category.name}}",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
    )
    threads = torch.get_num_threads()
    try:
        train_main()
    finally:
        torch.set_num_threads(threads)


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


def test_multirun_trains_each_category_into_its_own_run_folder(
    monkeypatch, tmp_path, tiny_demo_overrides
):
    multirun(monkeypatch, tmp_path, tiny_demo_overrides)
    assert_one_run_per_category(tmp_path)


def test_joblib_launcher_trains_the_categories_in_parallel_processes(
    monkeypatch, tmp_path, tiny_demo_overrides
):
    launcher = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    multirun(monkeypatch, tmp_path, tiny_demo_overrides, *launcher)
    assert_one_run_per_category(tmp_path)
