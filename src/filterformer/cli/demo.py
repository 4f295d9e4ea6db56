"""ff-demo: the whole workflow on the built-in synthetic category, on a CPU, in minutes.

    ff-demo [--out DIR] [--epochs N]

1. writes a synthetic category in the MVTec AD 2 layout (texture photos shipped with
   scikit-image, pasted defects with exact masks, lighting changes), and prints its layout;
2. trains the ``demo`` preset on it (a small randomly initialised ViT: no weights, no network),
   exactly as ``ff-train preset=demo`` does;
3. evaluates test_public as ``ff-eval --run`` does and prints the metrics table;
4. exports the maps and masks of test_public and both private splits as ``ff-predict`` does,
   with heat-map overlays of the anomalous test images, and says where everything is.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from filterformer.cli.common import report_user_errors
from filterformer.data.mvtec_ad2 import SPLITS, MVTecAD2

CATEGORY = "synthetic"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ff-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("filterformer-demo"), help="output folder")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the demo preset's)")
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="extra ff-train overrides, e.g. seed=2"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def print_layout(root: Path) -> None:
    """Print the generated category's splits with their image counts."""
    print(f"Synthetic category in the MVTec AD 2 layout: {root / CATEGORY}")
    for split in SPLITS:
        samples = MVTecAD2(root, CATEGORY, split)
        good, bad = sum(s.label == 0 for s in samples), sum(s.label == 1 for s in samples)
        detail = f"{good} good, {bad} bad" if samples[0].label is not None else "no ground truth"
        size = f"{samples[0].height}x{samples[0].width}"
        print(f"  {split:<20} {len(samples):>3} images ({detail}), {size} px")


def run_demo(out: Path, epochs: int | None, overrides: Sequence[str], progress: bool) -> None:
    """Generate, train, evaluate and export; every step writes under ``out``."""
    from hydra import compose, initialize_config_dir

    from filterformer.cli import eval as ff_eval
    from filterformer.cli import predict as ff_predict
    from filterformer.cli.train import config_dir, prepare_config, run_training

    out = out.expanduser().resolve()
    data_root, run_dir, export_dir = out / "data", out / "run", out / "export"
    quiet = [] if progress else ["--no-progress"]

    train_overrides = [
        "preset=demo",
        f"data.root={data_root}",
        f"run_dir={run_dir}",
        f"progress={str(progress).lower()}",
        *([f"train.epochs={epochs}"] if epochs else []),
        *overrides,
    ]
    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = compose("train", overrides=train_overrides)
    print("== 1/4 data")
    cfg = prepare_config(cfg)  # writes the synthetic category (idempotent)
    print_layout(data_root)

    print(f"\n== 2/4 training: ff-train {' '.join(train_overrides)}")
    run_training(cfg)

    print(f"\n== 3/4 evaluation: ff-eval --run {run_dir} --split test_public")
    if ff_eval.main(["--run", str(run_dir), "--split", "test_public", *quiet]):
        raise SystemExit(2)

    print(f"\n== 4/4 export: ff-predict --run {run_dir} --out {export_dir}")
    splits = ["test_public", "test_private", "test_private_mixed"]
    overlays = export_dir / "overlays"
    bad_images = data_root / CATEGORY / "test_public" / "bad"
    for argv in (
        ["--split", *splits, "--out", str(export_dir)],
        ["--images", str(bad_images), "--out", str(overlays)],
    ):
        if ff_predict.main(["--run", str(run_dir), *argv, *quiet]):
            raise SystemExit(2)

    print("\nDone. Where things are:")
    for what, where in (
        ("run folder (config, checkpoints, logs)", run_dir),
        ("metrics, PRO curve, overlays", run_dir / "eval" / "test_public"),
        ("anomaly maps (float16 TIFF)", export_dir / "anomaly_images" / CATEGORY),
        ("binary masks (PNG, 0/255)", export_dir / "anomaly_images_thresholded" / CATEGORY),
        ("heat-map overlays of test_public/bad", overlays),
    ):
        print(f"  {what + ':':<40} {where}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``ff-demo``."""
    args = build_parser().parse_args(argv)
    return report_user_errors(
        "ff-demo",
        lambda: run_demo(args.out, args.epochs, args.overrides, progress=not args.no_progress),
    )


if __name__ == "__main__":
    sys.exit(main())
