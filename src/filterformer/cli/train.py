"""The ``ff-train`` command line: help, hydra composition and one-line errors, then cli/train.py.

- ``--help`` is ours, not hydra's generic one: what the command does, the config groups with
  their choices (read from the config folder, so a new file shows up by itself) and examples,
  printed without importing torch or hydra. ``--hydra-help`` still shows hydra's options.
- Hydra composes the config (``-m`` sweeps, launchers and ``--cfg job`` as usual) before torch
  is imported, and raises its errors instead of printing them and exiting 1 (HYDRA_FULL_ERROR):
  an unknown group or choice, an override of a key that does not exist or a bad override
  becomes one line on stderr and exit code 2, as every user error of the training does.
- Nothing is left behind by such an error: hydra writes nothing for a single run (the run
  folder is made by cli/train.py once the config is valid), and a failed sweep has the new
  folder that holds only hydra's record removed (:class:`SweepFolder`).

torchrun starts ``python -m filterformer.cli.train``, which runs :func:`main` too.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import hydra
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from filterformer.cli.common import fail, report_user_errors, show_library_log
from filterformer.cli.suite import CURRENT_ROUTE, routing_table, split_args
from filterformer.io import outermost_missing
from filterformer.runs.compose import (
    check_paths,
    choice_help,
    config_dir,
    config_error_message,
    config_groups,
    default_choices,
)

PROG = "ff-train"
SWEEP_RECORD = "multirun.yaml"

GROUPS = {
    "preset": "the recipe: model, encoder, input size, optimiser, length",
    "model": "the network trained on the frozen encoder",
    "encoder": "the frozen feature extractor (DINOv2, DINO or DenseNet; tiny_*: random)",
    "data": "where the images come from",
    "category": "tiling, post-processing and threshold rule of one category",
    "suite": "one model per category (suite=NAME trains them all; category=C one)",
    "setting": "one model per category, or one on several (INP-Former's settings)",
    "logger": "an experiment tracker, besides the run folder's training_curves.png",
}
"""The config groups in the order the help lists them, each with what it chooses."""

SETTINGS = (
    ("run_dir=DIR", "the run folder (default runs/<model>/<category>)"),
    ("data.root=DIR", "the dataset's folder, e.g. MVTec AD 2's (default: $FF_DATA_ROOT)"),
    ("encoder.weights=FILE", "the encoder's weights file (weights/README.md)"),
    ("resume=true", "continue an interrupted run exactly"),
    ("train.epochs=N", "also train.batch_size, train.optimizer.lr, seed, device, ..."),
)

EXAMPLES = (
    ("ff-train preset=demo run_dir=runs/demo", "tiny random ViT, synthetic data, CPU, minutes"),
    (
        "ff-train category=vial data.root=/data/mvtec_ad_2 "
        "encoder.weights=weights/dinov2_vitl14_reg4_pretrain.pth",
        "the Filter-Former recipe on one MVTec AD 2 category",
    ),
    (
        "ff-train preset=demo data=folder data.train_dir=photos/good "
        "data.test_dir=photos/test category.name=bottles",
        "your own images (test/good/, test/<defect>/): a trial on the CPU (README)",
    ),
    ("ff-train -m category=can,fabric,vial", "one run folder per category (sweep)"),
    (
        "ff-train suite=inpformer_cpr_hybrid data.root=/data/mvtec_ad_2",
        "the ISVL hybrid, label-free (suite=isvl: as its code runs), one suite folder",
    ),
    ("ff-train --cfg job preset=inpformer_paper", "print the resolved config, train nothing"),
)


def no_progress_flag(args: Sequence[str]) -> list[str]:
    """``--no-progress`` (every command's flag) as ff-train's ``progress=false`` override."""
    return ["progress=false" if arg == "--no-progress" else arg for arg in args]


def wants_help(args: Sequence[str]) -> bool:
    """Whether the command line asks for the help (``-h`` or ``--help`` anywhere)."""
    return any(arg in ("-h", "--help") for arg in args)


def help_text(folder: Path) -> str:
    """The text of ``ff-train --help``."""
    groups, defaults = config_groups(folder), default_choices(folder)
    order = [g for g in GROUPS if g in groups] + [g for g in groups if g not in GROUPS]
    lines = [
        "usage: ff-train [group=choice | key=value ...] [-m] [--cfg job] [--hydra-help]",
        "       torchrun --nproc_per_node N -m filterformer.cli.train [key=value ...]",
        "",
        "Train one model (model=NAME, below) on one category into a run folder (config,",
        "checkpoints, logs, training_curves.png). Every value of",
        f"{folder / 'train.yaml'} can be set as key=value; a group picks one file.",
        "",
        "config groups (* = default):",
    ]
    for group in order:
        choices = ", ".join(c + "*" * (defaults.get(group) == c) for c in groups[group])
        lines.append(f"  {group:<10}{choices}")
        if group in GROUPS:
            lines.append(f"  {'':<10}({GROUPS[group]})")
    lines += ["", "models (model=NAME):"]
    for name in groups.get("model", []):
        lines += _wrapped(f"  {name:<14}", choice_help(folder, "model", name))
    lines += ["", "common settings:"]
    lines += [f"  {key:<22}{what}" for key, what in SETTINGS]
    lines += [
        "",
        "options:",
        "  -m, --multirun        one run per value of a sweep (category=can,fabric);",
        "                        add hydra/launcher=joblib to run them in parallel",
        "  --cfg job             print the resolved config and exit",
        "  --no-progress         no progress bars (as the other commands; = progress=false)",
        "  --hydra-help          hydra's own options",
        "",
        "examples:",
    ]
    for command, what in EXAMPLES:
        lines += [f"  {command}", f"      {what}"]
    return "\n".join(lines)


def _wrapped(head: str, text: str) -> list[str]:
    """``head`` then ``text`` wrapped to 100 columns, continuation lines indented below it."""
    return textwrap.wrap(text, 100, initial_indent=head, subsequent_indent=" " * len(head))


def print_help() -> None:
    """Print :func:`help_text` for the installed config folder."""
    print(help_text(config_dir()))


class SweepFolder(Callback):
    """Hydra callback (``hydra.callbacks.sweep_folder``): notes the folder a sweep creates."""

    folder: ClassVar[Path | None] = None
    created: ClassVar[Path | None] = None
    """The outermost folder the sweep creates (None: its folder existed)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.sweep.dir)).resolve()
        SweepFolder.folder, SweepFolder.created = folder, outermost_missing(folder)


def remove_sweep_record() -> None:
    """After a failed sweep, remove the folder it created if it holds only hydra's record.

    That is ``multirun.yaml`` and empty job folders: with ``hydra.output_subdir: null``
    hydra writes nothing else there, and every job trains into its own run folder.
    """
    folder, created = SweepFolder.folder, SweepFolder.created
    if folder is None or created is None or not folder.is_dir():
        return
    if all(
        p.name == SWEEP_RECORD or (p.is_dir() and not any(p.iterdir())) for p in folder.iterdir()
    ):
        shutil.rmtree(created, ignore_errors=True)


@hydra.main(config_path=str(config_dir()), config_name="train", version_base=None)
def _train(cfg: DictConfig) -> None:
    """Train one composed config (one job of a sweep); exit 2 on a user error."""
    from hydra.core.hydra_config import HydraConfig

    base = Path(HydraConfig.get().runtime.cwd)  # missing paths: one line before torch loads
    code = report_user_errors(PROG, lambda: check_paths(cfg, base), CURRENT_ROUTE.rewrite)
    if code:
        sys.exit(code)
    from filterformer.runs.train import describe_outcome, run_training  # torch: needs a config
    from filterformer.training.distributed import close_distributed, init_distributed

    distributed = init_distributed()

    def job() -> None:
        outcome = run_training(cfg, distributed)
        if distributed.is_main:
            print(f"{PROG}: {describe_outcome(outcome)}")

    try:
        code = report_user_errors(PROG, job, CURRENT_ROUTE.rewrite)
    finally:
        close_distributed()
    if code:
        sys.exit(code)  # only on failure: a multirun sweep goes on after each job


@contextmanager
def _hydra_raises() -> Iterator[None]:
    """Make hydra raise its errors (HYDRA_FULL_ERROR=1) instead of printing them and exiting 1."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def main() -> None:
    """Console entry point ``ff-train`` (``suite=NAME``: one run per routed category)."""
    show_library_log(PROG)
    if wants_help(sys.argv[1:]):
        print_help()
        return
    from filterformer.cli.suite import suite_jobs

    prog, args = sys.argv[0], no_progress_flag(sys.argv[1:])
    planned: list = []
    code = report_user_errors(PROG, lambda: planned.append(suite_jobs(config_dir(), args)))
    if code:
        sys.exit(code)
    jobs = planned[0]
    if jobs is None:
        sys.argv = [prog, *args]
        _main_once()
        return
    if "--cfg" in args and len(jobs) > 1:  # which model and settings each category gets
        print(routing_table(split_args(args)[0], jobs))
        return
    try:
        for job in jobs:
            if "--cfg" not in args:
                print(f"{PROG}: {job.category}: {job.route} -> {job.run_dir}", file=sys.stderr)
            sys.argv = [prog, *job.argv]
            CURRENT_ROUTE.route = job.route
            _main_once()
    finally:
        sys.argv = [prog, *args]
        CURRENT_ROUTE.route = None


def _main_once() -> None:
    """Compose and train the config of ``sys.argv``; hydra's errors become one line, exit 2."""
    SweepFolder.folder = SweepFolder.created = None
    with _hydra_raises():
        try:
            _train()
        except (HydraException, OmegaConfBaseException) as err:
            remove_sweep_record()
            sys.exit(fail(PROG, config_error_message(err)))
        except SystemExit as exit_info:  # a job's user error (exit code 2)
            if exit_info.code:
                remove_sweep_record()
            raise
        finally:
            _forget_hydra_config()


def _forget_hydra_config() -> None:
    """Drop the config hydra keeps after composing (``--cfg`` leaves it set): ``ff.train``
    later in this process (a notebook, a test) would take its launch folder for its own."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None


if __name__ == "__main__":
    main()
