"""The README starts where an engineer starts, and its commands run as written.

Every fenced command block is either marked ``<!-- readme-test: run -->`` (run here, in order,
in one empty folder with a ``photos/`` folder of good and defective images) or needs what a
test cannot have: a dataset (``data.root``, ``--data-root``) or encoder weights. The config
table is generated from the config files and must match them.

An ``ff-*`` line runs as its console script would: its words (split as the shell splits them)
go to the script's entry function in this process, in that folder, which saves starting Python
and importing torch for every line; a line the shell must interpret, and the Python blocks
(the torch-free runtime's), run in a fresh process.

Each ``ff-train`` line that trains gets ``SHORTER`` appended (one epoch, CPR's schedule cut to
a few steps): this test checks that the commands are right and that each one's output is what
the next one reads; what the presets learn in their full schedules is tested elsewhere
(test_train_cli: preset=demo; test_cpr_cli: CPR's heads; test_demo: ff-demo).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from filterformer.cli import eval as eval_cli
from filterformer.cli import export as export_cli
from filterformer.cli import predict as predict_cli
from filterformer.cli import train as train_cli
from filterformer.runs.compose import config_dir, config_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MARK = "<!-- readme-test: run -->"
BLOCK = re.compile(
    r"(?P<mark><!-- readme-test: run -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S
)
NEEDS = re.compile(r"data\.root=|--data-root|encoder\.weights=|^pip install|FF_DATA_ROOT")
COVERED_ELSEWHERE = {"ff-demo": "tests/test_demo.py runs the demo (on fewer images)"}
SHELL = re.compile(r"[$|&;<>*?`(){}~]")  # what the shell would expand or redirect


def _train(argv: list[str]) -> int | None:
    sys.argv = ["ff-train", *argv]
    train_cli.main()
    return 0


ENTRY: dict[str, Callable[[list[str]], int | None]] = {  # pyproject.toml's [project.scripts]
    "ff-train": _train,
    "ff-eval": eval_cli.main,
    "ff-predict": predict_cli.main,
    "ff-export": export_cli.main,
}


def blocks() -> list[tuple[bool, str, str]]:
    """(marked to run, language, text) of every fenced block, in order."""
    return [(bool(m["mark"]), m["lang"], m["body"]) for m in BLOCK.finditer(README)]


def commands(body: str) -> list[str]:
    """The command lines of a bash block (continuations joined, comments dropped)."""
    joined = body.replace("\\\n", " ")
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_readme_opens_with_two_setup_commands_contents_and_a_short_quick_start():
    first = blocks()[0]
    assert [line.split("&&")[0].strip() for line in commands(first[2])] == [
        "pip install -e .",
        'pip install -e ".[dev]"',
    ]
    top = README.split("## ", 1)[0]
    assert "**Contents:**" in top
    for anchor in re.findall(r"\]\(#([\w-]+)\)", top):
        titles = re.findall(r"(?m)^## (.+)$", README)
        slugs = {re.sub(r"[^\w -]", "", t).strip().lower().replace(" ", "-") for t in titles}
        assert anchor in slugs, anchor
    quick = README.split("## Quick start", 1)[1].split("## ", 1)[0]
    (marked, _, body), *_ = [b for b in blocks() if b[2] in quick]
    assert marked and len(body.strip().splitlines()) <= 10
    assert README.index("## Quick start") < README.index("## Your own images") < 8000


def test_every_command_block_runs_here_or_needs_data_or_weights():
    for marked, lang, body in blocks():
        if marked or lang not in ("bash", ""):
            continue
        for line in commands(body):
            if line.startswith(("ff-", "pip ", "torchrun", "python")):
                assert NEEDS.search(line), f"mark this block to run, or it needs data: {line}"


def test_the_config_table_is_the_configs():
    section = README.split("<!-- config-table: begin -->\n", 1)[1]
    table = section.split("\n<!-- config-table: end -->", 1)[0]
    assert table == config_table(config_dir()), "regenerate: python scripts/readme_table.py"


def _photos(root: Path) -> None:
    """photos/good (8), photos/test/good (3), test/scratch (3), photos/new (2): 96 x 128.

    8 good photos: 1 held out for the threshold, 7 to train on (one step of 4 per epoch)."""
    rng = np.random.default_rng(0)
    folders = {"good": 8, "test/good": 3, "test/scratch": 3, "new": 2}
    for folder, count in folders.items():
        (root / "photos" / folder).mkdir(parents=True)
        for index in range(count):
            noise = rng.integers(0, 256, (96, 128, 3)).astype(np.float32)
            image = np.clip(cv2.GaussianBlur(noise, (0, 0), 3) * 3 - 250, 0, 255)
            if folder == "test/scratch":
                image[30:40, 20:90] = 255
            cv2.imwrite(str(root / "photos" / folder / f"{index}.png"), image.astype(np.uint8))


@contextmanager
def _process_state() -> Iterator[None]:
    """Give back what a command line sets for the whole process (argv, torch threads and
    determinism), as the next line, in a process of its own, would find it."""
    argv, threads = sys.argv, torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


SHORTER = ["train.epochs=1", "category.cpr.steps=4"]
"""Appended to the ff-train lines that train (see the module's docstring)."""


def run_line(line: str, env: dict[str, str]) -> tuple[int, str]:
    """Run one command line in the current folder: its exit code and what to show on failure."""
    words = shlex.split(line)
    if words[0] == "ff-train" and "--cfg" not in words:
        words += SHORTER
        line = shlex.join(words)
    if words[0] not in ENTRY or SHELL.search(line):
        done = subprocess.run(["bash", "-e", "-c", line], env=env, capture_output=True, text=True)
        return done.returncode, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    with _process_state():
        try:
            code = ENTRY[words[0]](words[1:])
        except SystemExit as exit_info:
            code = exit_info.code
    return code or 0, "(its output is in the captured output below)"


@pytest.mark.slow
def test_the_marked_command_blocks_run_as_written(tmp_path, monkeypatch):
    _photos(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SILENT", "true")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    for marked, lang, body in blocks():
        if not marked:
            continue
        if lang == "python":
            done = subprocess.run(
                [sys.executable, "-c", body], env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, f"{body}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            continue
        for line in commands(body):
            if line.split()[0] not in COVERED_ELSEWHERE:
                code, output = run_line(line, env)
                assert code == 0, f"{line}\nexit code {code}\n{output}"
    assert (tmp_path / "preds" / "bottles" / "scores.csv").is_file()
    assert (tmp_path / "demo.tar.gz").is_file()
