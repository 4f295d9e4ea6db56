"""ff-demo: the whole workflow on the built-in synthetic category, on a CPU, in minutes.

    ff-demo [--out DIR] [--epochs N] [--encoder-weights FILE]

1. writes a synthetic category in the MVTec AD 2 layout (texture photos shipped with
   scikit-image, pasted defects with exact masks, lighting changes), and prints its layout;
2. trains the ``demo`` preset on it (a small randomly initialised ViT: no weights, no network),
   exactly as ``ff-train preset=demo`` does; with ``--encoder-weights`` a real DINOv2 ViT-S/14
   or ViT-B/14 with registers instead, on a short CPU schedule;
3. evaluates test_public as ``ff-eval --run`` does and prints the metrics table;
4. exports the maps and masks of test_public and both private splits as ``ff-predict`` does,
   with labelled overlays of the test_public images;
5. says where everything is, what the numbers mean and what to expect of them.

Everything is written inside DIR. Running again replaces the previous demo in DIR: its files
wait in ``DIR/.previous`` until the new run has finished, and come back if it fails. A DIR
holding files that ff-demo did not write is refused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from filterformer.cli.common import report_user_errors, show_library_log
from filterformer.data.mvtec_ad2 import SPLITS, MVTecAD2
from filterformer.errors import CheckpointError, ConfigError
from filterformer.evaluation.report import pro_key
from filterformer.evaluation.selection import chosen_on
from filterformer.io import write_json
from filterformer.runs.compose import compose_config

CATEGORY = "synthetic"
SPLIT = "test_public"  # the split the demo evaluates
MARKER = "ff-demo.json"
"""Written first into the output folder: it marks the folder as ff-demo's (replaceable)."""
PREVIOUS = ".previous"
PRO_LIMIT = 0.05
"""ff-eval's default integration limit, the benchmark server's."""
AU_PRO = pro_key(PRO_LIMIT)
METRICS = (
    (AU_PRO, f"AU-PRO@{PRO_LIMIT:g}"),
    ("seg_f1", "SegF1"),
    ("class_f1", "ClassF1"),
    ("image_auroc", "I-AUROC"),
)
RANDOM_ENCODER_RANGE: dict[str, tuple[float, float]] = {
    AU_PRO: (0.02, 0.10),
    "seg_f1": (0.01, 0.10),
    "class_f1": (0.60, 0.86),
    "image_auroc": (0.50, 0.65),
}
"""What the default demo (random encoder) gives, as fractions: a range, not one figure.

Measured with ``ff-demo --overrides seed=S`` for S = 1..4 (torch 2.14, 2 CPU cores):
AU-PRO@0.05 0.024-0.055, SegF1 0.016-0.051, ClassF1 0.739-0.756, I-AUROC 0.537-0.599; another
machine with newer packages gave 0.081 / 0.034 / - / 0.609. The bounds leave room for more.
"""
REAL_ENCODERS: dict[str, tuple[str, ...]] = {
    "dinov2_vits14_reg": ("train.epochs=10",),
    "dinov2_vitb14_reg": ("train.epochs=6", "input.resize=[112,140]"),
}
"""Encoders ff-demo runs from a weights file, with the demo preset's changes for them (ours):
fewer epochs, and for ViT-B a smaller network input, so that training on a CPU takes minutes."""
EXPLANATIONS = (
    (
        "AU-PRO@0.05",
        "how much of each defect region the map finds, averaged over the thresholds that\n"
        "flag at most 5 % of the normal pixels (area under the PRO curve, normalised)",
    ),
    ("SegF1", "pixel F1 of the binary masks at the run's threshold, pooled over the split"),
    ("ClassF1", "image F1; an image with any flagged pixel is called anomalous"),
    ("I-AUROC", "how often a defective image scores (max of its map) above a good one"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ff-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("filterformer-demo"),
        help="output folder; a previous demo there is replaced (default: filterformer-demo)",
    )
    parser.add_argument("--epochs", type=int, help="training epochs (default: the demo preset's)")
    parser.add_argument(
        "--encoder-weights",
        type=Path,
        metavar="FILE",
        help="DINOv2 ViT-S/14 or ViT-B/14 with registers (Meta .pth or timm .safetensors, "
        "see weights/README.md): the same demo with a real encoder",
    )
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="extra ff-train overrides, e.g. seed=2"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def encoder_overrides(weights: Path) -> list[str]:
    """ff-train overrides for a real encoder, chosen by the shape of the weights in ``weights``."""
    from filterformer.models.encoder import load_weights_file, variant_of, vit_shape

    weights = weights.expanduser().resolve()
    shape = vit_shape(load_weights_file(weights))
    variant = None if shape is None else variant_of(shape)
    if variant not in REAL_ENCODERS:
        found = (
            "no ViT" if shape is None else f"{variant or 'a ViT'} ({shape[0]}-d, {shape[1]} blocks)"
        )
        raise CheckpointError(
            f"{weights} holds {found}; ff-demo runs DINOv2 ViT-S/14 or ViT-B/14 with registers "
            "(dinov2_vits14_reg4_pretrain.pth or dinov2_vitb14_reg4_pretrain.pth, "
            "see weights/README.md). Train other encoders with ff-train encoder=... "
            "encoder.weights=FILE."
        )
    # The demo preset's one thread suits the tiny random ViT; a real one uses every core.
    weights_value = f"encoder.weights={quoted(weights)}"
    return [f"encoder={variant}", weights_value, "train.threads=null", *REAL_ENCODERS[variant]]


def quoted(path: Path) -> str:
    """``path`` as a quoted hydra override value (paths may hold spaces, commas or '=')."""
    return "'" + str(path).replace("'", "\\'") + "'"


def demo_config(
    out: Path,
    epochs: int | None,
    overrides: Sequence[str],
    progress: bool,
    weights: Path | None = None,
) -> tuple[Any, list[str]]:
    """The composed ff-train config of the demo in ``out``, and the overrides that made it."""
    train_overrides = [
        "preset=demo",
        f"data.root={quoted(out / 'data')}",
        f"run_dir={quoted(out / 'run')}",
        f"progress={str(progress).lower()}",
        *(encoder_overrides(weights) if weights is not None else []),
        *([f"train.epochs={epochs}"] if epochs else []),
        *overrides,
    ]
    try:
        return compose_config(train_overrides), train_overrides
    except ConfigError as err:
        raise ConfigError(f"--overrides: {err}") from None


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _status(out: Path) -> str | None:
    """The status in ``out``'s marker ("running", "complete"), None without a marker."""
    marker = out / MARKER
    if not marker.is_file():
        return None
    try:
        return str(json.loads(marker.read_text()).get("status"))
    except (ValueError, AttributeError):
        return "unreadable"


def claim_output(out: Path) -> None:
    """Make ``out`` ready for a new demo, keeping the last complete one in ``out/.previous``.

    The partial files of an interrupted run are deleted (the complete demo before it, if
    any, already waits in .previous). Files that ff-demo did not write are never touched.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (ff-demo creates it).")
    previous = out / PREVIOUS
    entries = [p for p in out.iterdir() if p.name != PREVIOUS] if out.is_dir() else []
    if entries:
        status = _status(out)
        if status is None:
            raise ConfigError(
                f"--out {out} holds files that ff-demo did not write; choose an empty or new "
                "folder (ff-demo replaces only its own earlier output)."
            )
        if status == "complete":
            if previous.exists():
                _remove(previous)
            previous.mkdir()
            for entry in entries:
                entry.rename(previous / entry.name)
        else:
            for entry in entries:
                _remove(entry)
    out.mkdir(parents=True, exist_ok=True)


def restore_previous(out: Path) -> None:
    """After a failed run: delete its files and bring the previous demo back, if any."""
    previous = out / PREVIOUS
    for entry in out.iterdir():
        if entry.name != PREVIOUS:
            _remove(entry)
    if previous.is_dir():
        for entry in previous.iterdir():
            entry.rename(out / entry.name)
        previous.rmdir()
    if not any(out.iterdir()):
        out.rmdir()


def print_layout(root: Path) -> None:
    """Print the generated category's splits with their image counts."""
    print(f"Synthetic category in the MVTec AD 2 layout: {root / CATEGORY}")
    for split in SPLITS:
        samples = MVTecAD2(root, CATEGORY, split)
        good, bad = sum(s.label == 0 for s in samples), sum(s.label == 1 for s in samples)
        detail = f"{good} good, {bad} bad" if samples[0].label is not None else "no ground truth"
        size = f"{samples[0].height}x{samples[0].width}"
        print(f"  {split:<20} {len(samples):>3} images ({detail}), {size} px")


def run_steps(train_overrides: Sequence[str], out: Path, progress: bool) -> None:
    """Steps 1-4 through the Python API: generate, train, evaluate, export; every step
    writes under ``out``."""
    import filterformer as ff
    from filterformer.runs.train import describe_outcome, prepare_config

    data_root, export_dir = out / "data", out / "export"
    print("== 1/4 data")
    prepare_config(compose_config(train_overrides))  # writes the synthetic category (idempotent)
    print_layout(data_root)

    print(f"\n== 2/4 training: ff.train{tuple(train_overrides)}")
    run = ff.train(*train_overrides)
    print(f"ff-train: {describe_outcome(run.outcome)}")

    print(f"\n== 3/4 evaluation: run.evaluate(split={SPLIT!r})")
    print(run.evaluate(split=SPLIT, progress=progress).table)

    print(f"\n== 4/4 export: run.write_maps({str(export_dir)!r}, ...)")
    run.write_maps(export_dir, [SPLIT], overlays=True, progress=progress)
    run.write_maps(export_dir, ["test_private", "test_private_mixed"], progress=progress)
    print(f"wrote {export_dir}")


def print_locations(out: Path) -> None:
    """Where the demo put what."""
    run_dir, export_dir = out / "run", out / "export"
    print("\nDone. Where things are:")
    for what, where in (
        ("run folder (config, checkpoints, logs)", run_dir),
        ("metrics (JSON/CSV), PRO curve, overlays", out / "run_eval" / SPLIT),
        ("anomaly maps (float16 TIFF)", export_dir / "anomaly_images" / CATEGORY),
        ("binary masks (PNG, 0/255)", export_dir / "anomaly_images_thresholded" / CATEGORY),
        ("overlays of every test_public image", export_dir / "overlays" / CATEGORY),
        ("float16 rescale and threshold", export_dir / "rescale.json"),
    ):
        print(f"  {what + ':':<42} {where}")


def chance_levels(labels: Sequence[int]) -> dict[str, float | None]:
    """What a map without information scores on a split with these image labels (fractions).

    A random map's PRO equals its FPR, so its AU-PRO is half the limit; calling every image
    anomalous gives ClassF1 2 bad / (2 bad + good); a random image ranking gives AUROC 0.5.
    """
    bad = sum(1 for label in labels if label)
    return {
        AU_PRO: PRO_LIMIT / 2,
        "seg_f1": None,
        "class_f1": 2 * bad / (2 * bad + len(labels) - bad),
        "image_auroc": 0.5,
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _selection_note(selected_on: dict[str, str | None]) -> str:
    """Whether test_public chose anything it is scored with (metrics.json's selected_on)."""
    chosen = chosen_on(selected_on, SPLIT)
    if chosen:
        return f"{SPLIT} also chose the {' and '.join(chosen)}, so the figures are optimistic."
    return f"Nothing was chosen on {SPLIT} (no test label was used), so the figures are unbiased."


def explain(row: dict[str, Any], labels: Sequence[int], encoder: str | None) -> str:
    """The closing summary: this run's figures beside what to expect, and what they mean."""
    chance = chance_levels(labels)
    bad = sum(1 for label in labels if label)
    expected = "random encoder, expected [%]" if encoder is None else ""
    lines = [
        f"What the numbers mean (test_public: {bad} defective, {len(labels) - bad} good "
        "images; percent here, fractions in the files):",
        f"  {'metric':<12} {'this run [%]':>12}  {'chance [%]':>10}  {expected}".rstrip(),
    ]
    for key, title in METRICS:
        low, high = RANDOM_ENCODER_RANGE[key]
        span = f"{100 * low:.0f} - {100 * high:.0f}" if encoder is None else ""
        cells = f"{_percent(row.get(key)):>12}  {_percent(chance[key]):>10}  {span}"
        lines.append(f"  {title:<12} {cells}".rstrip())
    lines.append("")
    for title, text in EXPLANATIONS:
        lines.append(f"  {title:<12} " + text.replace("\n", "\n" + " " * 15))
    lines.append(
        "  Chance: what a map without information scores (for ClassF1: calling every image "
        "anomalous).\n  " + _selection_note(row.get("selected_on") or {}) + "\n"
    )
    if encoder is None:
        lines.append(
            "The encoder here is a randomly initialised ViT: it knows nothing about images, so "
            "the figures sit near\nchance and move with the seed and library versions; the demo "
            "shows the workflow, not the method.\nWith real weights, `ff-demo --encoder-weights "
            "weights/dinov2_vits14_reg4_pretrain.pth` (ViT-S or ViT-B\nwith registers, "
            "weights/README.md) runs the same demo on the CPU in minutes; pretrained features\n"
            "tell a pasted defect from the texture, so every figure should rise well above chance."
        )
    else:
        lines.append(
            f"Encoder: {encoder} with your weights, on a short CPU schedule (few epochs, small "
            "images): far\nfrom the paper recipes (ff-train preset=filterformer_paper on a GPU)."
        )
    return "\n".join(lines)


def summarise(out: Path, encoder: str | None) -> dict[str, Any]:
    """Print where things are and what the figures mean; return the marker document."""
    metrics = json.loads((out / "run_eval" / SPLIT / "metrics.json").read_text())
    row = metrics["categories"][CATEGORY]
    labels = [int(s.label) for s in MVTecAD2(out / "data", CATEGORY, SPLIT)]
    print_locations(out)
    print()
    print(explain(row, labels, encoder))
    return {
        "status": "complete",
        "encoder": encoder or "tiny_random",
        "split": SPLIT,
        "metrics": {key: row.get(key) for key, _ in METRICS},
        "chance": chance_levels(labels),
        "expected_random_encoder": None if encoder else RANDOM_ENCODER_RANGE,
    }


def run_demo(
    out: Path,
    epochs: int | None,
    overrides: Sequence[str],
    progress: bool,
    weights: Path | None = None,
) -> None:
    """Check the inputs, claim ``out``, run the steps; restore the previous demo on failure."""
    out = out.expanduser().resolve()
    cfg, train_overrides = demo_config(out, epochs, overrides, progress, weights)
    claim_output(out)
    try:
        write_json(out / MARKER, {"status": "running", "overrides": train_overrides})
        run_steps(train_overrides, out, progress)
        encoder = None if weights is None else str(cfg.encoder.variant)
        write_json(out / MARKER, {**summarise(out, encoder), "overrides": train_overrides})
    except BaseException:
        restore_previous(out)
        raise
    if (out / PREVIOUS).exists():
        shutil.rmtree(out / PREVIOUS)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``ff-demo``."""
    args = build_parser().parse_args(argv)
    show_library_log("ff-demo")
    return report_user_errors(
        "ff-demo",
        lambda: run_demo(
            args.out,
            args.epochs,
            args.overrides,
            progress=not args.no_progress,
            weights=args.encoder_weights,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
