"""ff-train's user errors: one line on stderr, exit code 2, and no new folder left behind.

Hydra's own errors (composition happens before our code runs) are checked in a fresh process,
as a user meets them; the errors of our checks and set-up run in-process on the tiny demo
config.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from filterformer.cli.common import report_user_errors
from filterformer.cli.train import main
from filterformer.io import PARTIAL_MARK, write_json
from filterformer.models.encoder import hub_reachable

FF_TRAIN = [sys.executable, "-c", "from filterformer.cli.train import main; main()"]
DEMO = ["preset=demo", "train.epochs=1", "eval.every=0", "progress=false", "input.resize=[56,70]"]
TINY = [  # the demo preset cut to a few 56 x 70 synthetic images and one epoch
    *DEMO,
    "data.image_size=[56,70]",
    "data.counts={train: 4, validation: 2, test_public_good: 1, test_public_bad: 1, "
    "test_private: 1, test_private_mixed: 1}",
]


def assert_one_line_error(code: int | None, stderr: str, *words: str) -> None:
    """Exit code 2 and exactly one stderr line, ``ff-train: error: ...``, holding ``words``."""
    lines = stderr.splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("ff-train: error: "), stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def ff_train_process(cwd: Path, *args: str):
    """ff-train in a fresh process started in ``cwd``."""
    return subprocess.run([*FF_TRAIN, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def ff_train(monkeypatch, capsys, *args: str) -> tuple[int | None, str]:
    """ff-train in this process; returns the exit code and stderr."""
    monkeypatch.setattr(sys, "argv", ["ff-train", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["model=foo"], ["model/foo", "valid: cpr, ear, fader, filterformer, inpformer"]),
        (["modle=inpformer"], ["'modle'", "check the spelling"]),
        (["train.epoch=3"], ["'train.epoch'", "check the spelling"]),
        (["train.epochs=[1"], ["'train.epochs=[1'"]),
        (["-m", "category=vial,vail"], ["category/vail", "valid:", "walnuts"]),
    ],
)
def test_hydra_composition_errors_are_one_line(tmp_path, args, words):
    done = ff_train_process(tmp_path, *args)
    assert_one_line_error(done.returncode, done.stderr, *words)
    assert list(tmp_path.iterdir()) == []  # not even hydra's multirun/ record


def test_a_sweep_with_an_impossible_value_is_refused_before_any_job(monkeypatch, capsys, tmp_path):
    """Our range check of every job of a sweep (in this process: hydra has composed it)."""
    monkeypatch.chdir(tmp_path)
    code, err = ff_train(monkeypatch, capsys, "-m", "preset=demo", "train.epochs=0,1")
    assert_one_line_error(code, err, "train.epochs=0", "an integer >= 1")
    assert list(tmp_path.iterdir()) == []  # not even hydra's multirun/ record


def test_missing_mandatory_value_names_the_key(monkeypatch, capsys, tmp_path):
    """data=folder without data.train_dir (``???`` in the config): not omegaconf's traceback."""
    code, err = ff_train(monkeypatch, capsys, *DEMO, "data=folder", f"run_dir={tmp_path / 'run'}")
    assert_one_line_error(code, err, "data.train_dir", "data.train_dir=...")
    assert list(tmp_path.iterdir()) == []


def test_offline_download_names_the_variant_and_the_weights_folder(
    monkeypatch, capsys, tmp_path, tmp_path_factory
):
    """allow_download=true without a network: no 60-line hub traceback, no folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    hub_reachable.cache_clear()  # checked once per process: check again, offline
    try:
        code, err = ff_train(
            monkeypatch,
            capsys,
            *TINY,
            "encoder=dinov2_vits14_reg",
            "encoder.allow_download=true",
            f"run_dir={tmp_path / 'run'}",
        )
    finally:
        hub_reachable.cache_clear()
    assert_one_line_error(code, err, "dinov2_vits14_reg", "weights/", "weights/README.md")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.epochs=0", ["train.epochs=0", "an integer >= 1"]),
        ("train.epochs=-1", ["train.epochs=-1", "an integer >= 1"]),
        ("eval.every=-3", ["eval.every=-3", "an integer >= 0"]),
        ("train.batch_size=0", ["train.batch_size=0", "an integer >= 1"]),
        ("train.optimizer.lr=0", ["train.optimizer.lr=0", "a number > 0"]),
        ("train.optimizer.final_lr=-1e-4", ["train.optimizer.final_lr", "a number >= 0"]),
        ("train.optimizer.warmup_iters=-5", ["warmup_iters=-5", "an integer >= 0"]),
        ("input.resize=[50,70]", ["input.resize=[50, 70]", "patch size 14", "[42, 70]"]),
        ("resume=maybe", ["resume=maybe", "true or false"]),
    ],
)
def test_impossible_settings_stop_before_any_work(monkeypatch, capsys, tmp_path, override, words):
    code, err = ff_train(monkeypatch, capsys, *TINY, override, f"run_dir={tmp_path / 'run'}")
    assert_one_line_error(code, err, *words)
    assert list(tmp_path.iterdir()) == []


def test_weights_are_checked_before_synthetic_data_is_generated(monkeypatch, capsys, tmp_path):
    """No local weights and no download: neither the data folder nor the run folder appears."""
    code, err = ff_train(
        monkeypatch,
        capsys,
        *TINY,
        "encoder=dinov2_vits14_reg",
        f"data.root={tmp_path / 'data'}",
        f"run_dir={tmp_path / 'run'}",
    )
    assert_one_line_error(code, err, "dinov2_vits14_reg", "weights/README.md")
    assert list(tmp_path.iterdir()) == []


def test_a_batch_larger_than_the_training_set_leaves_no_run_folder(monkeypatch, capsys, tmp_path):
    """A data-dependent check (4 training images, batch 8): refused before the run starts."""
    run_dir = tmp_path / "run"
    code, err = ff_train(
        monkeypatch,
        capsys,
        *TINY,
        "train.batch_size=8",
        f"data.root={tmp_path / 'data'}",
        f"run_dir={run_dir}",
    )
    assert_one_line_error(code, err, "batch size 8", "4 training images", "train.batch_size")
    assert not run_dir.exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_weights_file_that_is_no_checkpoint_is_named(
    monkeypatch, capsys, tmp_path, tmp_path_factory, suffix
):
    """encoder.weights=/etc/passwd, say: the file is named, nothing is created."""
    text = tmp_path_factory.mktemp("weights") / f"passwd{suffix}"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    code, err = ff_train(
        monkeypatch,
        capsys,
        *TINY,
        f"encoder.weights={text}",
        f"run_dir={tmp_path / 'run'}",
    )
    assert_one_line_error(code, err, str(text), "not a readable weights file")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "no space left"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_os_errors_while_writing_the_run_folder_leave_nothing(
    monkeypatch, capsys, tmp_path, code, words
):
    """A full disk names no file: the message names the file being written all the same
    (the run's manifest, which its writer writes first)."""

    def write_fails(self, *args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "write_text", write_fails)
    exit_code, err = ff_train(monkeypatch, capsys, *TINY, f"run_dir={tmp_path / 'run'}")
    assert_one_line_error(exit_code, err, str(tmp_path / "run" / "manifest.json"), words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_parent_folder_is_one_line(monkeypatch, capsys, tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, err = ff_train(monkeypatch, capsys, *TINY, f"run_dir={parent / 'run'}")
    finally:
        parent.chmod(0o755)
    assert_one_line_error(code, err, str(parent / "run"), "permission denied")
    assert list(parent.iterdir()) == []


def test_a_set_up_failure_removes_the_new_run_folder_but_never_an_old_one(
    monkeypatch, capsys, tmp_path
):
    """A corrupt training image fails after the run folder was written: a new folder goes,
    a folder that existed before stays with what it held."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "broken.png").write_bytes(b"not a png")
    folder_data = ["data=folder", f"data.train_dir={images}"]
    code, err = ff_train(monkeypatch, capsys, *DEMO, *folder_data, f"run_dir={tmp_path / 'new'}")
    assert_one_line_error(code, err, "broken.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]

    old = tmp_path / "old"
    old.mkdir()
    (old / "notes.txt").write_text("mine")
    code, err = ff_train(monkeypatch, capsys, *DEMO, *folder_data, f"run_dir={old}")
    assert_one_line_error(code, err, "broken.png")
    assert (old / "notes.txt").read_text() == "mine"


def test_atomic_writes_name_the_target_when_the_disk_is_full(monkeypatch, tmp_path):
    def write_fails(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a full disk: no file named

    monkeypatch.setattr(Path, "write_text", write_fails)
    with pytest.raises(OSError) as err:
        write_json(tmp_path / "out.json", {"a": 1})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "out.json")
    assert not [p for p in tmp_path.iterdir() if PARTIAL_MARK in p.name]


def test_report_user_errors_maps_fixable_os_errors_to_one_line(capsys):
    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/config.yaml")

    assert report_user_errors("ff-x", full_disk) == 2
    err = capsys.readouterr().err
    assert err == (
        "ff-x: error: /data/run/config.yaml: no space left on the device; free some space or "
        "write to another disk.\n"
    )

    def disk_failure():  # not a condition the user can fix by a setting: a bug report
        raise OSError(errno.EIO, "Input/output error", "/data/x")

    with pytest.raises(OSError):
        report_user_errors("ff-x", disk_failure)
