"""Run folders under attack and bad luck: damaged, edited, unsigned or escaping files, full
disks, link loops, a missing GPU. Every command refuses in one line with exit code 2 and
leaves nothing behind; nothing is ever written outside the folder it was given.

Three tiny runs (the demo preset, cpr_demo, FADeR on an EAR run) are trained once for the
module; each case damages a fresh copy, restored at the run's own path (a resumed run must
stay where its config says it is).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from filterformer.cli.common import report_user_errors
from filterformer.cli.eval import main as eval_cli
from filterformer.cli.predict import main as predict_cli
from filterformer.cli.train import main as train_cli
from filterformer.runs.compose import config_dir
from filterformer.runs.run import load_run
from filterformer.runs.train import run_training
from filterformer.training.checkpoint import checkpoint_files

pytestmark = pytest.mark.slow

TINY = [  # the demo preset cut to one epoch on a few 56 x 70 images, evaluated once
    "preset=demo",
    "train.epochs=1",
    "eval.every=1",
    "progress=false",
    "data.image_size=[56,70]",
    "input.resize=[56,70]",
    "data.counts={train: 4, validation: 2, test_public_good: 1, test_public_bad: 1, "
    "test_private: 1, test_private_mixed: 1}",
]
TINY_UNET = ["model.widths=[4,8,8,16,16]"]
COMMANDS = ("ff-eval", "ff-predict", "resume")
MUTATIONS: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda data: data[: len(data) // 2],
    "emptied": lambda data: b"",
    "wrong-typed": lambda data: b"[1, 2, 3]\n",  # valid JSON and YAML, of the wrong type
    "bit-flipped": lambda data: (
        data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0x01]) + data[len(data) // 2 + 1 :]
    ),
}


def ff_train(*args: str) -> int:
    """ff-train in this process; its exit code."""
    threads, argv = torch.get_num_threads(), sys.argv
    sys.argv = ["ff-train", *args]
    try:
        train_cli()
        return 0
    except SystemExit as exit_info:
        return exit_info.code or 0
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)


def error_line(capsys, prog: str) -> str:
    """The one line on stderr, ``<prog>: error: ...`` (asserted to be the only one)."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    return lines[0]


@dataclass
class Trained:
    """A trained tiny run: where it lives, an untouched copy, the overrides that made it."""

    run: Path
    pristine: Path
    args: list[str]

    @cached_property
    def resume_config(self) -> DictConfig:
        """``ff-train <args> resume=true`` composed (once: hydra is slow to start)."""
        with initialize_config_dir(str(config_dir()), version_base=None):
            return compose("train", overrides=[*self.args, "resume=true"])

    def restore(self) -> Path:
        """The run as trained, back at its own path."""
        shutil.rmtree(self.run, ignore_errors=True)
        shutil.copytree(self.pristine, self.run)
        return self.run

    def command(self, name: str, out: Path, *extra: str) -> int:
        """Run ``ff-eval``, ``ff-predict`` (writing under ``out``) or resume on the run."""
        run = str(self.run)
        common = ["--no-progress", "--device", "cpu", *extra]
        if name == "ff-eval":
            return eval_cli(["--run", run, "--out", str(out / "eval"), *common])
        if name == "ff-predict":
            return predict_cli(["--run", run, "--out", str(out / "maps"), *common])
        threads = torch.get_num_threads()  # ff-train's job, without composing it again
        try:
            return report_user_errors("ff-train", lambda: run_training(self.resume_config))
        finally:
            torch.set_num_threads(threads)


def train(base: Path, *args: str) -> Trained:
    run = base / "run"
    args = [*args, f"run_dir={run}"]
    assert ff_train(*args) == 0
    pristine = base / "pristine"
    shutil.copytree(run, pristine, ignore=shutil.ignore_patterns(".lock"))
    return Trained(run, pristine, args)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Trained:
    base = tmp_path_factory.mktemp("demo")
    return train(base, *TINY, f"data.root={base / 'data'}")


@pytest.fixture(scope="module")
def cpr_run(tmp_path_factory) -> Trained:
    base = tmp_path_factory.mktemp("cpr")
    return train(base, "preset=cpr_demo", "progress=false", f"data.root={base / 'data'}")


@pytest.fixture(scope="module")
def fader_run(tmp_path_factory) -> Trained:
    """FADeR on an EAR run, both without evaluation during training (they load ``last``)."""
    base = tmp_path_factory.mktemp("fader")
    plain = [*TINY, "eval.every=0", *TINY_UNET, f"data.root={base / 'data'}"]
    ear = train(base / "ear", "model=ear", *plain)
    return train(base / "fader", "model=fader", *plain, f"model.ear_run={ear.run}")


def readers(trained: Trained) -> dict[str, set[str]]:
    """Each file of the run (relative name) -> the commands that depend on it.

    Every command verifies the files the manifest signs (and the manifest); ff-eval and
    ff-predict read the weights of the checkpoint they load; resume reads ``last``'s weights
    and state and the logs. The pseudo-validation cache is made again when damaged.
    """
    run = trained.pristine
    signed = {*json.loads((run / "manifest.json").read_text())["files"], "manifest.json"}
    loaded = load_run(run).checkpoint.name
    last = checkpoint_files(run / "checkpoints" / "last")
    found = {}
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        name = path.relative_to(run).as_posix()
        if name in signed:
            found[name] = set(COMMANDS)
        elif name in ("train_log.csv", "eval_log.csv"):
            found[name] = {"resume"}
        elif path.parent.name == "checkpoints" and path.suffix in (".safetensors", ".pt"):
            found[name] = {"ff-eval", "ff-predict"} if path.name == loaded else set()
            if path.name in (last.weights.name, last.state.name):
                found[name].add("resume")
        elif name.startswith("validation_pseudo/"):
            found[name] = set()
        else:
            pytest.fail(f"{name}: a run file of no known kind; say which commands read it")
    return found


def damage(path: Path, mutation: str) -> None:
    path.write_bytes(MUTATIONS[mutation](path.read_bytes()))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("which", ["demo_run", "cpr_run", "fader_run"])
def test_every_damaged_run_file_is_refused_in_one_line(which, command, request, tmp_path, capsys):
    """Each file truncated, emptied, of the wrong type, one bit flipped: a command that
    depends on it exits 2 with one line naming it (or the manifest that signs it); with
    every file it does not depend on damaged at once (in turn each way), it works."""
    trained: Trained = request.getfixturevalue(which)
    files = readers(trained)
    capsys.readouterr()  # what training printed
    prog = "ff-train" if command == "resume" else command
    for name, commands in files.items():
        for mutation in MUTATIONS if command in commands else ():
            damage(trained.restore() / name, mutation)
            code = trained.command(command, tmp_path / f"{mutation}-{name.replace('/', '_')}")
            line = error_line(capsys, prog)
            assert code == 2, (name, mutation, line)
            assert Path(name).name in line or "manifest.json" in line, (name, mutation, line)
    unused = [name for name, commands in files.items() if command not in commands]
    run = trained.restore()
    for index, name in enumerate(unused):
        damage(run / name, list(MUTATIONS)[index % len(MUTATIONS)])
    assert trained.command(command, tmp_path / "unused") == 0, unused
