"""ff-convert: turn another code base's checkpoint into a filterformer run folder.

    ff-convert inp-former model.pth --encoder dinov2_vitb14_reg --category bottle --out runs/bottle
    ff-eval --run runs/bottle --data-root /data/mvtec_anomaly_detection --split test
    ff-convert inp-former model.pth --encoder dinov2_vitb14_reg --setting multi_class \
        --data mvtec_ad --out runs/inp_mvtec        # the official multi-class checkpoint
    ff-eval --run runs/inp_mvtec --data-root /data/mvtec_anomaly_detection   # 15 rows + mean

``inp-former`` reads the ``model.pth`` that the official INP-Former scripts save (encoder
included). The run folder gets the checkpoint's encoder as ``encoder.safetensors`` (timm
names; its SHA-256 identifies it; the config names it relative to the run folder, so the
folder can be moved), ``config.yaml`` in parity mode, ``versions.json`` and
``checkpoints/last.{safetensors,json}``; ``ff-eval --run`` and ``ff-predict --run`` use it
as they use a trained run. Parity mode is ``preset=inpformer_paper``, the official INP-Former
pipeline end to end: model ``inpformer``, PIL bilinear resize to 448 then centre crop 392,
DINOv2's own position-embedding interpolation, whole images (no tiling), and the INP-Former
evaluation protocol (``eval.protocol=inpformer``: 256 x 256 maps, zero-padded Gaussian, top-1 %
image score, its seven metrics). ``--data`` names the benchmark (``mvtec_ad``, where the
official checkpoints come from, ``visa``, ``real_iad`` or ``mvtec_ad2``), so that
``ff-eval --run RUN --data-root ROOT`` needs nothing else. Extra hydra overrides after the
options (e.g. ``data.root=/data/mvtec_anomaly_detection``) adjust the stored config.
``--setting multi_class`` writes the official multi-class script's checkpoint (one model of
all the data's categories, or ``--categories``) as one multi-class run: one copy of the
weights, every category evaluated and reported (setting=multi_class, configs/setting/).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from filterformer.cli.common import report_user_errors
from filterformer.errors import CheckpointError, ConfigError, FilterformerError
from filterformer.runs.compose import config_dir, config_error_message, config_groups

if TYPE_CHECKING:  # torch is imported where it is used, so that --help stays fast
    import torch
    from omegaconf import DictConfig

ENCODER_FILE = "encoder.safetensors"
PARITY_OVERRIDES = ("preset=inpformer_paper",)
"""The official recipe and evaluation (configs/preset/inpformer_paper.yaml)."""
DATA_KINDS = ("mvtec_ad", "visa", "real_iad", "mvtec_ad2")
"""Benchmarks a converted checkpoint can be evaluated on; the official ones are MVTec AD's."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ff-convert", description=__doc__.split("\n\n")[0])
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    inp = formats.add_parser("inp-former", help="official INP-Former model.pth (luow23/INP-Former)")
    inp.add_argument("checkpoint", type=Path, help="the official model.pth")
    inp.add_argument(
        "--encoder",
        required=True,
        choices=config_groups(config_dir())["encoder"],
        help="encoder the checkpoint was trained with (dinov2reg_vit_base_14 -> dinov2_vitb14_reg)",
    )
    inp.add_argument(
        "--category", help="category the checkpoint was trained on (single-class checkpoints)"
    )
    inp.add_argument(
        "--setting",
        choices=("single_class", "multi_class"),
        default="single_class",
        help="multi_class: a checkpoint of one model on many categories (the official "
        "multi-class script's); one run folder with every category of --data (or --categories)",
    )
    inp.add_argument(
        "--categories",
        nargs="+",
        help="with --setting multi_class: the categories it was trained on",
    )
    inp.add_argument("--out", type=Path, required=True, help="run folder to create")
    inp.add_argument(
        "--data",
        choices=DATA_KINDS,
        default=DATA_KINDS[0],
        help="benchmark the run reads (data=...; default mvtec_ad); set its root with "
        "data.root=... or ff-eval --data-root",
    )
    inp.add_argument("--force", action="store_true", help="replace an existing run folder's files")
    inp.add_argument("overrides", nargs="*", help="hydra overrides of the stored config")
    return parser


def load_official(path: Path) -> dict[str, torch.Tensor]:
    """Read a `torch.save`d state dict (tensors only, never arbitrary pickled objects)."""
    import torch

    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found.")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike
        raise CheckpointError(f"{path}: not a readable PyTorch state dict ({err}).") from None
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise CheckpointError(
            f"{path}: expected the plain state dict that torch.save(model.state_dict()) writes, "
            f"found {type(state_dict).__name__} with non-tensor entries."
        )
    return state_dict


def parity_config(
    variant: str,
    category: str | None,
    run_dir: Path,
    overrides: Sequence[str],
    data: str = DATA_KINDS[0],
    categories: Sequence[str] | None = None,
) -> DictConfig:
    """The run config: ff-train's defaults in parity mode, then the user's overrides.

    ``category`` None: a multi-class run of ``categories`` (None: every category of ``data``).
    """
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    if category is not None:
        chosen = [category_override(category)]
    else:
        chosen = ["setting=multi_class"]
        chosen += [f"setting.categories=[{','.join(categories)}]"] if categories else []
    settings = [
        *PARITY_OVERRIDES,
        f"data={data}",
        f"encoder={variant}",
        "encoder.pretrained=false",
        *chosen,
        f"run_dir={run_dir}",
        *overrides,
    ]
    try:
        with initialize_config_module("filterformer.configs", version_base=None):
            return compose("train", overrides=settings)
    except HydraException as err:
        raise ConfigError(
            f"bad config override among {list(overrides)}: {config_error_message(err)}"
        ) from None


def category_override(category: str) -> str:
    """``category=<name>`` when a category config has that name, else ``category.name=<name>``."""
    shipped = category in config_groups(config_dir())["category"]
    return f"category={category}" if shipped else f"category.name={category}"


def convert_inp_former(args: argparse.Namespace) -> Path:
    """Write the run folder for an official INP-Former checkpoint; return its path."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from filterformer.convert.inp_former import convert_state_dict
    from filterformer.io import atomic_path
    from filterformer.lock import lock_run
    from filterformer.models.encoder import weights_sha256
    from filterformer.runs.files import sign_run
    from filterformer.runs.run import CONFIG_FILE, build_from_config, create_run, resolve_run_paths
    from filterformer.runs.setting import resolve_members
    from filterformer.training.checkpoint import save_checkpoint

    run_dir = args.out.resolve()
    if (run_dir / CONFIG_FILE).exists() and not args.force:
        raise ConfigError(
            f"{run_dir} already holds a run ({CONFIG_FILE}); choose another --out or pass --force."
        )
    config = parity_config(
        args.encoder,
        _category(args),
        run_dir,
        args.overrides,
        args.data,
        args.categories,
    )
    resolve_members(config, Path.cwd())  # multi-class: its categories, listed in the run
    model_config, source = config.model, str(args.checkpoint)
    weights = convert_state_dict(
        load_official(args.checkpoint),
        args.encoder,
        extractor_depth=model_config.extractor_depth,
        decoder_depth=model_config.decoder_depth,
        mlp_ratio=model_config.mlp_ratio,
        pretrain_img_size=config.encoder.pretrain_img_size,
        source=source,
    )
    lock_run(run_dir)  # creates run_dir: this process is its only writer
    encoder_file = run_dir / ENCODER_FILE
    with atomic_path(encoder_file) as tmp:
        save_file(weights.encoder, str(tmp), metadata={"converted_from": source})
    config.encoder.weights = ENCODER_FILE  # relative: resolved against the run folder
    config.model.num_inps = weights.num_inps
    model, identity = build_from_config(resolve_run_paths(config, run_dir))
    model.load_trainable_state_dict(weights.trainable)
    create_run(run_dir, config, identity["encoder_weights"])
    converted_from = {
        "format": "inp-former",
        "file": str(args.checkpoint.resolve()),
        "sha256": weights_sha256(args.checkpoint),
    }
    meta = {
        **identity,
        "step": 0,
        "epoch": None,
        "config": OmegaConf.to_container(config),
        "converted_from": converted_from,
    }
    save_checkpoint(run_dir / "checkpoints" / "last", model, meta=meta)
    sign_run(run_dir)
    _calibrate(run_dir, args)
    print(
        f"ff-convert: {run_dir}: {len(weights.encoder)} encoder tensors ({ENCODER_FILE}, "
        f"sha256 {identity['encoder_weights'][:12]}...) and {len(weights.trainable)} trainable "
        f"tensors ({weights.num_inps} INPs) from {source}. Use: ff-eval --run {run_dir} "
        f"--data-root <{args.data} root>"
    )
    return run_dir


def _category(args: argparse.Namespace) -> str | None:
    """--category of a single-class conversion (required there, refused with multi_class)."""
    if args.setting == "multi_class":
        if args.category is not None:
            raise ConfigError(
                "--setting multi_class converts a model of several categories: name them with "
                "--categories (default: every category of --data), not --category."
            )
        return None
    if args.category is None:
        raise ConfigError(
            "--category is required for a single-class checkpoint (or pass --setting "
            "multi_class for the official multi-class script's checkpoint)."
        )
    if args.categories:
        raise ConfigError("--categories goes with --setting multi_class; use --category.")
    return args.category


def _calibrate(run_dir: Path, args: argparse.Namespace) -> None:
    """Calibrate the converted run as training would; data without a validation split (MVTec
    AD, VisA) or not at hand leaves it uncalibrated, which is said."""
    from filterformer.runs.calibrate import calibrate_run
    from filterformer.runs.settings import resolve_device

    try:
        calibrate_run(run_dir, device=resolve_device(None))
    except FilterformerError as err:
        print(f"ff-convert: {run_dir}: not calibrated ({err})", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ff-convert; returns the exit code (2 for any user-fixable error)."""
    args = build_parser().parse_args(argv)
    return report_user_errors("ff-convert", lambda: convert_inp_former(args))


if __name__ == "__main__":
    sys.exit(main())
