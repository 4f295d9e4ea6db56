"""A run folder (and an ff-predict output folder) has one writer; a second is refused by name."""

import os
import signal
import subprocess
import sys
import time

import pytest

from filterformer.cli.predict import main as predict_cli
from filterformer.cli.train import main as train_cli
from filterformer.errors import FolderLockedError
from filterformer.lock import RUN_LOCK, lock_output, lock_run

HOLD = """
import sys, time
from filterformer.lock import lock_output, lock_run
(lock_run if sys.argv[1] == "run" else lock_output)(sys.argv[2])
print("held", flush=True)
if sys.argv[3] == "wait":
    time.sleep(120)
"""


def holder(kind, folder, then="wait"):
    """A process that takes the lock of ``folder`` (and keeps it until killed, or exits)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, kind, str(folder), then], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "held\n"
    return process


def wait_for_lock_of(process, lock_file, timeout=120):
    """Wait until ``process`` holds ``lock_file`` (its PID is written there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock_file.is_file() and lock_file.read_text().startswith(f"PID {process.pid} "):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    pytest.fail(f"{lock_file} was not taken")


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_blocks_nothing(
    tmp_path,
):
    run_dir = tmp_path / "run"
    process = holder("run", run_dir)
    with pytest.raises(FolderLockedError, match=rf"{run_dir}: .*\(PID {process.pid} on "):
        lock_run(run_dir)
    process.send_signal(signal.SIGKILL)
    process.wait()
    lock_run(run_dir)  # the OS released the killed holder's lock: a resume can go on
    lock_run(run_dir)  # and taking it again in the same process is a no-op


def test_the_lock_file_is_removed_when_its_holder_exits(tmp_path):
    process = holder("run", tmp_path, then="exit")
    process.wait()
    assert process.returncode == 0 and not (tmp_path / RUN_LOCK).exists()


@pytest.mark.slow
def test_two_ff_train_on_one_run_folder_one_trains_the_other_exits_2_naming_it(
    tmp_path, monkeypatch, capsys, tiny_demo_overrides
):
    """Seeds 1 and 2 into one run_dir: without the lock both would "succeed" with one lost."""
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "filterformer.cli.train",
            *tiny_demo_overrides,
            "train.epochs=10",  # long enough to still hold the folder when the second starts
            f"run_dir={run_dir}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_lock_of(first, run_dir / RUN_LOCK)
    monkeypatch.setattr(sys, "argv", ["ff-train", *tiny_demo_overrides, f"run_dir={run_dir}"])
    with pytest.raises(SystemExit) as second:
        train_cli()
    out, err = first.communicate(timeout=120)

    assert first.returncode == 0, err
    assert second.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"(PID {first.pid} on " in lines[0], lines
    assert lines[0].startswith(f"ff-train: error: {run_dir}: another process is writing")
    assert "ff-train: " in out and "(10 epochs, 10 steps)" in out
    assert not (run_dir / RUN_LOCK).exists()


def test_ff_predict_output_folder_has_one_writer(tmp_path, capsys):
    out = tmp_path / "maps"
    run = tmp_path / "run"  # passes the up-front check; the lock refuses before it is read
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    process = holder("output", out)
    try:
        code = predict_cli(["--run", str(run), "--out", str(out), "--no-progress"])
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"{out}: another process is writing" in lines[0]
    assert f"(PID {process.pid} on " in lines[0]
    assert os.listdir(out) == [RUN_LOCK]  # the holder's lock; the refused process wrote nothing
    lock_output(out)


def test_a_submission_is_locked_from_beside_it_so_it_holds_no_extra_file(tmp_path):
    submission = tmp_path / "my_submission"
    lock_output(submission, beside=True)
    assert os.path.isfile(tmp_path / "my_submission.lock")
    assert not submission.exists()
