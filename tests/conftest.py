"""Shared fixtures: the golden AD 2 sample, a small synthetic category, a tiny image folder,
a writer of encoder weights in Meta's file layout, and tiny trained runs shared by the session
(tiny_demo_run and its ONNX export tiny_demo_export, tiny_ear_run, tiny_fader_run)."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from filterformer.data.synthetic import make_synthetic_category
from filterformer.runs.compose import compose_config
from filterformer.runs.settings import train_settings
from filterformer.training.loop import OptimizerSettings, TrainSettings

# The suite's tensors are tiny: one intra-op thread is as fast and cannot oversubscribe the
# two CI cores (two threads per op under load made a tiny training step 100x slower).
torch.set_num_threads(1)

DATA_DIR = Path(__file__).parent / "data"

SYNTHETIC_CATEGORY = "synthetic"
SYNTHETIC_SIZE = (64, 80)  # (H, W): small and non-square
SYNTHETIC_COUNTS = {
    "train": 8,
    "validation": 4,
    "test_public_good": 4,
    "test_public_bad": 8,
    "test_private": 4,
    "test_private_mixed": 4,
}


@pytest.fixture(scope="session")
def ad2_sample_root() -> Path:
    """MVTec AD 2-layout root holding the tiny category ``fakecat`` (read-only)."""
    return DATA_DIR / "ad2_sample" / "mvtec_ad_2"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data root with a category ``synthetic`` (64 x 80 images), generated once per session."""
    root = tmp_path_factory.mktemp("synthetic_root")
    make_synthetic_category(
        root, SYNTHETIC_CATEGORY, seed=0, image_size=SYNTHETIC_SIZE, counts=SYNTHETIC_COUNTS
    )
    return root


@pytest.fixture(scope="session")
def tiny_image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of four 32 x 40 RGB images, one per format: a.png, b.jpg, c.bmp, d.tif."""
    folder = tmp_path_factory.mktemp("tiny_images")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "c.bmp", "d.tif"):
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
    return folder


@pytest.fixture(scope="session")
def tiny_demo_overrides() -> list[str]:
    """ff-train overrides: the demo preset cut to one epoch on a few 56 x 70 images."""
    return [
        "preset=demo",
        "train.epochs=1",
        "eval.every=0",
        "progress=false",
        "data.image_size=[56,70]",
        "input.resize=[56,70]",
        "data.counts={train: 4, validation: 2, test_public_good: 1, test_public_bad: 1, "
        "test_private: 1, test_private_mixed: 1}",
    ]


def ff_train(*args: str) -> None:
    """Run ff-train's command line in this process with ``args`` (as after ``ff-train``)."""
    from filterformer.cli.train import main as train_cli

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["ff-train", *args])
        train_cli()
    torch.set_num_threads(threads)  # ff-train sets the run's threads


@contextlib.contextmanager
def built_once(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Path, bool]]:
    """(the session's folder ``name``, whether to build it now), shared by every pytest-xdist
    worker: the first worker that asks builds it; the others wait on a file lock until it is
    built, so a session fixture is built once, not once per worker."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above each worker's own
    shared = base / "built_once"
    shared.mkdir(exist_ok=True)
    folder, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        build = not done.exists()
        if build:
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            folder.mkdir()
        yield folder, build
        done.touch()


@pytest.fixture(scope="session")
def tiny_demo_run(tmp_path_factory: pytest.TempPathFactory, tiny_demo_overrides) -> Path:
    """The tiny demo run (tiny_demo_overrides), trained once per session: ``<tmp>/runs/demo``,
    alone in its runs folder. Read it only: copy it (shutil.copytree) to change it."""
    with built_once(tmp_path_factory, "tiny_demo") as (folder, build):
        if build:
            ff_train(*tiny_demo_overrides, f"run_dir={folder / 'runs' / 'demo'}")
    return folder / "runs" / "demo"


@pytest.fixture(scope="session")
def tiny_demo_export(
    tmp_path_factory: pytest.TempPathFactory, tiny_demo_run: Path
) -> tuple[Path, str]:
    """ff-export of tiny_demo_run to its default place, once per session: (its model.onnx,
    what ff-export printed). Read it only."""
    from filterformer.cli.export import main as export_cli

    with built_once(tmp_path_factory, "tiny_demo_export") as (folder, build):
        if build:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                assert export_cli(["--run", str(tiny_demo_run), "--no-progress"]) == 0
            (folder / "printed.txt").write_text(printed.getvalue())
    model = tiny_demo_run.with_name(tiny_demo_run.name + "_export") / "model.onnx"
    return model, (folder / "printed.txt").read_text()


TINY_UNET = ["model.widths=[4,8,8,16,16]"]
"""EAR's and FADeR's U-Net cut to a few channels."""
TINY_CPR_HEADS = [
    "category.cpr.steps=4",
    "category.cpr.batch_size=4",
    "model.out_dim=32",
    "model.inner_dim=16",
    "model.inception_dim=16",
    "model.codebook_samples=500",
    "model.points=50",
    "model.top_k=2",  # an exported local graph unrolls window x top_k comparisons
]
"""CPR cut to 4 steps of narrow heads and a small codebook (for a CPR run or a suite's route)."""
TINY_CPR = [
    "preset=cpr_demo",
    "progress=false",
    "data.image_size=[64,64]",
    "input.resize=[64,64]",
    "data.counts={train: 6, validation: 2, test_public_good: 1, test_public_bad: 1, "
    "test_private: 1, test_private_mixed: 1}",
    *TINY_CPR_HEADS,
]
"""preset=cpr_demo (a texture) cut to 4 steps of narrow heads on a few 64 x 64 images."""
TINY_SUITE = [
    "progress=false",
    "train.epochs=1",
    "eval.every=1",
    "train.num_workers=0",
    "train.threads=1",
    "inpformer:encoder=tiny_random",
    "inpformer:input.resize=[56,56]",
    "inpformer:train.batch_size=4",
    "cpr:encoder=tiny_densenet",
    "cpr:input.resize=[64,64]",
    *(f"cpr:{override}" for override in TINY_CPR_HEADS),
]
"""A suite's routes cut to one epoch of the tiny random ViT (INP-Former) and TINY_CPR_HEADS."""


@pytest.fixture(scope="session")
def tiny_ear_run(tmp_path_factory: pytest.TempPathFactory, tiny_demo_overrides) -> Path:
    """An EAR run with a tiny U-Net on tiny_demo_overrides' data, once per session:
    ``<tmp>/ear``, its data in ``<tmp>/data``. Read it only."""
    with built_once(tmp_path_factory, "tiny_ear") as (root, build):
        if build:
            ff_train(
                "model=ear",
                *tiny_demo_overrides,
                *TINY_UNET,
                f"data.root={root / 'data'}",
                f"run_dir={root / 'ear'}",
            )
    return root / "ear"


@pytest.fixture(scope="session")
def tiny_fader_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_ear_run: Path, tiny_demo_overrides
) -> Path:
    """A FADeR run with a tiny U-Net on tiny_ear_run (and its data), once per session.
    Read it only."""
    with built_once(tmp_path_factory, "tiny_fader") as (folder, build):
        if build:
            ff_train(
                "model=fader",
                *tiny_demo_overrides,
                *TINY_UNET,
                f"data.root={tiny_ear_run.parent / 'data'}",
                f"model.ear_run={tiny_ear_run}",
                f"run_dir={folder / 'fader'}",
            )
    return folder / "fader"


@pytest.fixture(scope="session")
def write_meta_weights() -> Callable[[dict[str, torch.Tensor], Path], Path]:
    """Writes a timm DINOv2-reg state dict to a .pth laid out as Meta's released files are.

    Meta's files keep the cls position inside ``pos_embed`` (timm folds it into
    ``cls_token``), call the registers ``register_tokens`` and hold a ``mask_token``.
    """

    def write(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
        skip = ("cls_token", "reg_token", "pos_embed")
        meta = {k: v for k, v in state_dict.items() if k not in skip}
        cls_pos = torch.randn_like(state_dict["cls_token"])
        meta["cls_token"] = state_dict["cls_token"] - cls_pos
        meta["pos_embed"] = torch.cat([cls_pos, state_dict["pos_embed"]], dim=1)
        meta["register_tokens"] = state_dict["reg_token"]
        meta["mask_token"] = torch.zeros(1, state_dict["cls_token"].shape[-1])
        torch.save(meta, path)
        return path

    return write


BENCHMARK_SIZE = (64, 80)  # (H, W) of the generated MVTec AD / VisA images


def _texture_image(rng: np.random.Generator, defect: np.ndarray | None = None) -> np.ndarray:
    """A smooth random RGB texture (uint8); ``defect`` (bool H x W) is painted bright."""
    coarse = rng.integers(60, 200, (8, 10, 3), dtype=np.uint8)
    image = cv2.resize(coarse, BENCHMARK_SIZE[::-1], interpolation=cv2.INTER_CUBIC)
    if defect is not None:
        image[defect] = 255
    return image


def _defect_mask(rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros(BENCHMARK_SIZE, dtype=bool)
    top, left = rng.integers(8, 40), rng.integers(8, 56)
    mask[top : top + 12, left : left + 14] = True
    return mask


def make_mvtec_ad_tree(root: Path, category: str, seed: int = 0) -> Path:
    """An MVTec AD-layout category: 6 train/good, 2 test/good, 2 test/cut, 1 test/hole."""
    rng = np.random.default_rng(seed)
    folder = root / category
    for relative, count in (("train/good", 6), ("test/good", 2)):
        (folder / relative).mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(folder / relative / f"{i:03d}.png"), _texture_image(rng))
    for defect, count in (("cut", 2), ("hole", 1)):
        (folder / "test" / defect).mkdir(parents=True)
        (folder / "ground_truth" / defect).mkdir(parents=True)
        for i in range(count):
            mask = _defect_mask(rng)
            cv2.imwrite(str(folder / "test" / defect / f"{i:03d}.png"), _texture_image(rng, mask))
            mask_file = folder / "ground_truth" / defect / f"{i:03d}_mask.png"
            cv2.imwrite(str(mask_file), mask.astype(np.uint8) * 255)
    (root / "license.txt").write_text("not an image\n")
    return root


def make_visa_tree(root: Path, category: str, seed: int = 0) -> Path:
    """A VisA-layout root with split_csv/1cls.csv: 6 train, 2 test normal, 3 test anomalies.

    Masks hold the defect's index (1 or 2), as VisA's do, not 255.
    """
    rng = np.random.default_rng(seed)
    images, masks = root / category / "Data" / "Images", root / category / "Data" / "Masks"
    for sub in (images / "Normal", images / "Anomaly", masks / "Anomaly"):
        sub.mkdir(parents=True)
    rows = ["object,split,label,image,mask"]
    for i in range(8):
        cv2.imwrite(str(images / "Normal" / f"{i:04d}.JPG"), _texture_image(rng))
        split = "train" if i < 6 else "test"
        rows.append(f"{category},{split},normal,{category}/Data/Images/Normal/{i:04d}.JPG,")
    for i in range(3):
        mask = _defect_mask(rng)
        cv2.imwrite(str(images / "Anomaly" / f"{i:03d}.JPG"), _texture_image(rng, mask))
        cv2.imwrite(str(masks / "Anomaly" / f"{i:03d}.png"), mask.astype(np.uint8) * (1 + i % 2))
        rows.append(
            f"{category},test,anomaly,{category}/Data/Images/Anomaly/{i:03d}.JPG,"
            f"{category}/Data/Masks/Anomaly/{i:03d}.png"
        )
    rows.append("cashew,train,normal,cashew/Data/Images/Normal/0000.JPG,")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def make_real_iad_tree(root: Path, category: str, seed: int = 0) -> Path:
    """A Real-IAD-layout root: 6 train OK, 2 test OK, 3 test NG (JPEG images, PNG masks).

    realiad_1024/<category>/{OK,NG/<class>}/<specimen>/<name>.jpg with the masks beside their
    images, and realiad_jsons/realiad_jsons/<category>.json listing train and test, as the
    dataset archive does (the JSON also has a "meta" block, which readers ignore).
    """
    rng = np.random.default_rng(seed)
    folder = root / "realiad_1024" / category
    entries: dict[str, list[dict]] = {"train": [], "test": []}
    for i in range(8):
        relative = f"OK/S{i:04d}/{category}_{i:04d}_OK_C1_2023.jpg"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / relative), _texture_image(rng))
        split = "train" if i < 6 else "test"
        entry = {"category": category, "anomaly_class": "OK", "image_path": relative}
        entries[split].append({**entry, "mask_path": None})
    for i, defect in enumerate(("QS", "HS", "QS")):
        stem = f"NG/{defect}/S{100 + i:04d}/{category}_{100 + i:04d}_NG_{defect}_C2_2023"
        (folder / stem).parent.mkdir(parents=True, exist_ok=True)
        mask = _defect_mask(rng)
        cv2.imwrite(str(folder / f"{stem}.jpg"), _texture_image(rng, mask))
        cv2.imwrite(str(folder / f"{stem}.png"), mask.astype(np.uint8) * 255)
        entries["test"].append(
            {"anomaly_class": defect, "image_path": f"{stem}.jpg", "mask_path": f"{stem}.png"}
        )
    jsons = root / "realiad_jsons" / "realiad_jsons"
    jsons.mkdir(parents=True, exist_ok=True)
    document = {"meta": {"prefix": "", "normal_class": "OK"}, **entries}
    (jsons / f"{category}.json").write_text(json.dumps(document, indent=1))
    return root


@pytest.fixture
def mvtec_ad_root(tmp_path: Path) -> Path:
    """A writable MVTec AD-layout root with the category ``carpet`` (make_mvtec_ad_tree)."""
    return make_mvtec_ad_tree(tmp_path / "mvtec_ad", "carpet")


@pytest.fixture
def visa_root(tmp_path: Path) -> Path:
    """A writable VisA-layout root with the category ``candle`` (make_visa_tree)."""
    return make_visa_tree(tmp_path / "visa", "candle")


@pytest.fixture
def real_iad_root(tmp_path: Path) -> Path:
    """A writable Real-IAD-layout root with the category ``audiojack`` (make_real_iad_tree)."""
    return make_real_iad_tree(tmp_path / "real_iad", "audiojack")


def settings_for_tests(**changes: object) -> TrainSettings:
    """The demo preset's training settings (the configs hold every default), with
    ``changes``; ``optimizer`` may be a dict of changes to the preset's optimiser."""
    from dataclasses import replace

    base = train_settings(compose_config(["preset=demo", "progress=false", "device=cpu"]))
    optimizer = changes.pop("optimizer", {})
    if isinstance(optimizer, dict):
        optimizer = replace(base.optimizer, **optimizer)
    assert isinstance(optimizer, OptimizerSettings)
    return replace(base, optimizer=optimizer, **changes)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with end-to-end (``slow``) tests first, each keeping its order: pytest-xdist
    hands modules to its workers in this order, and the long ones started early let the
    workers finish together instead of one running a long module alone at the end."""
    heavy = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in heavy)
