"""Run folders under attack and bad luck: damaged, edited, unsigned or escaping files, full
disks, link loops, a missing GPU. Every command refuses in one line with exit code 2 and
leaves nothing behind; nothing is ever written outside the folder it was given.

Three tiny runs (the demo preset, a cut cpr_demo, FADeR on an EAR run) are trained once for the
module; each case damages a fresh copy, restored at the run's own path (a resumed run must
stay where its config says it is).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
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

from conftest import TINY_CPR, TINY_UNET, png_header
from filterformer.cli.common import report_user_errors
from filterformer.cli.eval import main as eval_cli
from filterformer.cli.predict import main as predict_cli
from filterformer.cli.suite import suite_jobs
from filterformer.cli.train import main as train_cli
from filterformer.data.folder import ImageFolderDataset
from filterformer.errors import ConfigError
from filterformer.io import PARTIAL_MARK
from filterformer.models.encoder import weights_sha256
from filterformer.runs.compose import config_dir
from filterformer.runs.files import sign_run
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
    return train(base, *TINY_CPR, f"data.root={base / 'data'}")


@pytest.fixture(scope="module")
def fader_run(tmp_path_factory) -> Trained:
    """FADeR on an EAR run, both without evaluation during training (they load ``last``)."""
    base = tmp_path_factory.mktemp("fader")
    plain = [*TINY, "eval.every=0", *TINY_UNET, f"data.root={base / 'data'}"]
    ear = train(base / "ear", "model=ear", *plain)
    return train(base / "fader", "model=fader", *plain, f"model.ear_run={ear.run}")


def readers(trained: Trained) -> tuple[dict[str, set[str]], set[str]]:
    """Each file of the run (relative name) -> the commands that depend on it; and the files
    whose SHA-256 is recorded (in the manifest, or in the checkpoint's JSON for its weights
    and state).

    Every command verifies the files the manifest signs (and the manifest); ff-eval and
    ff-predict read the weights of the checkpoint they load; resume reads ``last``'s weights
    and state and the logs. The pseudo-validation cache is made again when damaged; the
    training curves are drawn again.
    """
    run = trained.pristine
    signed = {*json.loads((run / "manifest.json").read_text())["files"], "manifest.json"}
    loaded = load_run(run).checkpoint.name
    last = checkpoint_files(run / "checkpoints" / "last")
    found, hashed = {}, signed - {"manifest.json"}
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
            hashed.add(name)
        elif name.startswith("validation_pseudo/") or name == "training_curves.png":
            found[name] = set()  # a cache made again when damaged; a figure read by nothing
        else:
            pytest.fail(f"{name}: a run file of no known kind; say which commands read it")
    return found, hashed


def damage(path: Path, mutation: str) -> None:
    path.write_bytes(MUTATIONS[mutation](path.read_bytes()))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("which", ["demo_run", "cpr_run", "fader_run"])
def test_every_damaged_run_file_is_refused_in_one_line(which, command, request, tmp_path, capsys):
    """Each file truncated, emptied, of the wrong type, one bit flipped: a command that
    depends on it exits 2 with one line naming it (or the manifest that signs it); with
    every file it does not depend on damaged at once (in turn each way), it works.

    A file whose SHA-256 is recorded is compared with it before it is read, so every damage
    takes that one path (the hash differs): it gets the subtlest, one flipped bit. The files
    read without a recorded hash (the manifest itself, the logs) get all four."""
    trained: Trained = request.getfixturevalue(which)
    files, hashed = readers(trained)
    capsys.readouterr()  # what training printed
    prog = "ff-train" if command == "resume" else command
    for name, commands in files.items():
        mutations = ["bit-flipped"] if name in hashed else list(MUTATIONS)
        for mutation in mutations if command in commands else ():
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


# Names that become paths (issue: a category "../../ESCAPED" made ff-predict write outside --out)


def test_a_category_name_that_leaves_its_folders_is_refused_before_any_work(tmp_path, capsys):
    deep = tmp_path / "a" / "b"
    run = [f"data.root={deep / 'data'}", f"run_dir={deep / 'run'}"]
    assert ff_train(*TINY, "category.name=../../ESCAPED", *run) == 2
    assert "category.name '../../ESCAPED'" in error_line(capsys, "ff-train")
    assert list(tmp_path.iterdir()) == []  # no data, no run folder, nothing beside them


@pytest.mark.parametrize("signed", [True, False], ids=["re-signed", "unverified"])
def test_a_run_whose_category_leads_out_writes_nothing_anywhere(demo_run, tmp_path, capsys, signed):
    """A config.yaml edited to category.name ../../ESCAPED, signed again (a consistent but
    hostile run) or read with --no-verify: both readers refuse it before writing a file."""
    run = demo_run.restore()
    config = run / "config.yaml"
    text = config.read_text()
    assert text.count("name: synthetic") == 1
    config.write_text(text.replace("name: synthetic", "name: ../../ESCAPED"))
    if signed:
        sign_run(run)
    extra = () if signed else ("--no-verify",)
    out = tmp_path / "x" / "y"
    for command in ("ff-eval", "ff-predict"):
        assert demo_run.command(command, out, *extra) == 2
        assert "category.name '../../ESCAPED'" in error_line(capsys, command)
    assert list(tmp_path.iterdir()) == []


def test_suite_categories_and_evaluated_categories_must_be_plain_names(tmp_path, capsys):
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "evil.yaml").write_text(
        "dir: runs/evil\nroutes: {r: []}\ncategories: {'../../ESCAPED': {route: r}}\n"
    )
    with pytest.raises(ConfigError, match=r"suite=evil: category '../../ESCAPED': not usable"):
        suite_jobs(tmp_path, ["suite=evil"])
    (tmp_path / "maps").mkdir()
    assert eval_cli(["--maps", str(tmp_path / "maps"), "--categories", "../x"]) == 2
    assert "--categories '../x': not usable" in error_line(capsys, "ff-eval")


def test_image_names_become_output_names_only_when_plain(tmp_path):
    """A stem becomes a file name under --out (hidden files, such as '..png', are skipped)."""
    (tmp_path / "..png").write_bytes(png_header(4, 4))
    (tmp_path / "a\\..\\b.png").write_bytes(png_header(4, 4))  # a separator elsewhere
    with pytest.raises(ConfigError, match=r"file name without its extension 'a\\\\"):
        ImageFolderDataset(tmp_path, "test")


# Integrity: what verification catches (issue: each of these gave exit 0)


def edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def best_json(run: Path) -> Path:
    mode = json.loads((run / "fusion.json").read_text())["synthetic"]
    return run / "checkpoints" / f"best_{mode}.json"


TAMPERING = {
    "map_stats edited": (
        lambda run: edit_json(best_json(run), lambda m: m["map_stats"].update(inp=[9.0, 1.0])),
        False,
        "was changed since the run's writer signed it",
    ),
    "weights hash removed": (
        lambda run: edit_json(best_json(run), lambda m: m["files"]["weights"].pop("sha256")),
        True,  # even with the manifest signed again: the JSON must record the hash
        "records no SHA-256 of its weights file",
    ),
    "files block removed": (
        lambda run: edit_json(best_json(run), lambda m: m.pop("files")),
        True,
        "records no SHA-256 of its weights file",
    ),
    "best checkpoint deleted": (
        lambda run: best_json(run).unlink(),
        False,
        "is missing since the run's writer signed it",
    ),
    "manifest deleted": (
        lambda run: (run / "manifest.json").unlink(),
        False,
        "manifest.json: missing, so the run's files cannot be verified",
    ),
}


@pytest.mark.parametrize("tampering", TAMPERING)
def test_tampering_with_a_run_is_refused_by_both_readers(demo_run, tmp_path, capsys, tampering):
    tamper, resign, words = TAMPERING[tampering]
    run = demo_run.restore()
    tamper(run)
    if resign:
        sign_run(run)
    for command in ("ff-eval", "ff-predict"):
        assert demo_run.command(command, tmp_path / command) == 2
        line = error_line(capsys, command)
        assert words in line and "--no-verify" in line, line


def test_a_changed_cpr_reference_set_is_refused(cpr_run, tmp_path, capsys):
    """references.safetensors holds the images CPR retrieves from: one flipped byte changed
    two of three maps before it was signed."""
    run = cpr_run.restore()
    damage(run / "references.safetensors", "bit-flipped")
    for command in COMMANDS:
        assert cpr_run.command(command, tmp_path / command) == 2
        line = error_line(capsys, "ff-train" if command == "resume" else command)
        assert "references.safetensors: was changed since" in line


# Malformed files read without verification, and the training state


@pytest.mark.parametrize(
    ("which", "name", "content", "words"),
    [
        ("demo_run", "fusion.json", b'{"synthetic": ', "not a readable fusion record"),
        ("demo_run", "fusion.json", b'["mean"]', "not a fusion record"),
        ("fader_run", "map_stats.json", b'{"msgms": {"mean": "x", "std": 1}}', "not map stat"),
        ("fader_run", "map_stats.json", b"\xff\xfe", "not a readable map statistics record"),
        ("demo_run", "config.yaml", b"model: [\n", "not a readable run config"),
        ("demo_run", "config.yaml", b"- 1\n- 2\n", "not an ff-train run config"),
        (
            "demo_run",
            "thresholds.json",
            b'{"synthetic": {"mean": {"value": 1, "k": "x"}}}',
            "numbers",
        ),
    ],
)
def test_malformed_run_files_are_one_line_without_verification(
    request, tmp_path, capsys, which, name, content, words
):
    """Read with --no-verify (nothing checks them against the manifest): still one line."""
    trained: Trained = request.getfixturevalue(which)
    capsys.readouterr()
    (trained.restore() / name).write_bytes(content)
    for command in ("ff-eval", "ff-predict"):
        assert trained.command(command, tmp_path / command, "--no-verify") == 2
        line = error_line(capsys, command)
        assert name in line and words in line, line


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda meta: [meta], "not checkpoint metadata"),
        (lambda meta: meta["files"].update(weights=None), "must name the weights file"),
        (
            lambda meta: meta["files"]["weights"].update(name="../../run/x.safetensors"),
            "not a file beside it",
        ),
    ],
)
def test_malformed_checkpoint_metadata_is_one_line(demo_run, tmp_path, capsys, edit, words):
    run = demo_run.restore()
    meta_file = best_json(run)
    meta = json.loads(meta_file.read_text())
    meta = edit(meta) or meta
    meta_file.write_text(json.dumps(meta))
    for command in ("ff-eval", "ff-predict"):
        assert demo_run.command(command, tmp_path / command, "--no-verify") == 2
        line = error_line(capsys, command)
        assert f"{meta_file}: " in line and words in line, line


def test_a_training_state_without_the_optimizer_is_one_line(demo_run, capsys):
    """A consistent run (hashes and manifest updated) whose state lacks 'optimizer'."""
    run = demo_run.restore()
    files = checkpoint_files(run / "checkpoints" / "last")
    state = torch.load(files.state, weights_only=True)
    del state["optimizer"]
    torch.save(state, files.state)
    edit_json(
        files.meta,
        lambda meta: meta["files"]["state"].update(sha256=weights_sha256(files.state)),
    )
    sign_run(run)
    assert demo_run.command("resume", run) == 2
    line = error_line(capsys, "ff-train")
    assert f"{files.state}: the training state does not fit this run (KeyError" in line
    assert "resume=false" in line and "--no-verify" not in line


def test_a_malformed_export_record_in_out_is_one_line(demo_run, tmp_path, capsys):
    out = tmp_path / "maps"
    out.mkdir()
    (out / "rescale.json").write_text("[1, 2")
    demo_run.restore()
    assert predict_cli(["--run", str(demo_run.run), "--out", str(out), "--no-progress"]) == 2
    assert "rescale.json: not a readable export record" in error_line(capsys, "ff-predict")


# Full disks, link loops, huge images, a missing GPU


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_no_partial(
    monkeypatch, tmp_path, capsys
):
    """safetensors and torch wrote the checkpoint themselves and reported a full disk as their
    own errors (a 61-line traceback, exit 1)."""
    real = Path.write_bytes

    def full_for_weights(self, data):
        if ".safetensors" in self.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_for_weights)
    run = tmp_path / "run"
    assert ff_train(*TINY, f"data.root={tmp_path / 'data'}", f"run_dir={run}") == 2
    line = error_line(capsys, "ff-train")
    assert re.search(r"checkpoints/best_\w+\.[0-9a-f]{12}\.safetensors: no space left", line), line
    assert not [p for p in run.rglob("*") if PARTIAL_MARK in p.name]
    assert not list((run / "checkpoints").glob("*.safetensors"))


def test_a_full_disk_while_generating_data_says_so(monkeypatch, tmp_path, capsys):
    """It said 'check the folder is writable' (OpenCV only reports False)."""

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full)
    assert ff_train(*TINY, f"data.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}") == 2
    line = error_line(capsys, "ff-train")
    assert ".png: no space left on the device" in line and "writable" not in line


def test_symbolic_link_loops_are_one_line(demo_run, tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert predict_cli(["--run", str(demo_run.restore()), "--out", str(loop)]) == 2
    assert "loop: a symbolic link on this path leads back" in error_line(capsys, "ff-predict")
    assert eval_cli(["--run", str(loop)]) == 2
    assert "loop: a symbolic link on this path leads back" in error_line(capsys, "ff-eval")
    assert ff_train(*TINY, f"run_dir={loop}", f"data.root={tmp_path / 'data'}") == 2
    assert "loop: a symbolic link on this path leads back" in error_line(capsys, "ff-train")


def test_decompression_bombs_are_refused_before_decoding(demo_run, tmp_path, capsys):
    """A 57-byte PNG declaring 30000 x 30000 pixels, among own images or training images."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "bomb.png").write_bytes(png_header(30000, 30000))
    run = str(demo_run.restore())
    assert predict_cli(["--run", run, "--images", str(images), "--out", str(tmp_path / "o")]) == 2
    assert "bomb.png: its header declares over" in error_line(capsys, "ff-predict")
    folder = ["data=folder", f"data.train_dir={images}", f"run_dir={tmp_path / 'run'}"]
    assert ff_train(*TINY[:6], *folder) == 2
    assert "bomb.png: its header declares over" in error_line(capsys, "ff-train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_refused_before_the_run_folder_exists(tmp_path, capsys):
    run = [f"data.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}"]
    assert ff_train(*TINY, "device=cuda", *run) == 2
    assert "device 'cuda': this machine has no CUDA GPU" in error_line(capsys, "ff-train")
    assert list(tmp_path.iterdir()) == []


# MVTec AD 2 without validation/, and what is left behind


def test_an_mvtec_ad2_root_without_validation_is_refused_up_front(
    ad2_sample_root, tmp_path, capsys
):
    """It trained with exit 0, kept no best checkpoint or map statistics, and ff-eval failed."""
    root = shutil.copytree(ad2_sample_root, tmp_path / "mvtec_ad_2")
    shutil.rmtree(root / "fakecat" / "validation")
    run = tmp_path / "run"
    args = [*TINY[:6], "data=mvtec_ad2", f"data.root={root}", "category.name=fakecat"]
    assert ff_train(*args, f"run_dir={run}") == 2
    line = error_line(capsys, "ff-train")
    assert f"{root / 'fakecat' / 'validation'}: missing" in line and "data=folder" in line
    assert not run.exists()


def test_the_resume_sha_error_names_what_ff_train_can_do(demo_run, capsys):
    """It suggested --no-verify, which ff-train does not have."""
    damage(checkpoint_files(demo_run.restore() / "checkpoints" / "last").weights, "bit-flipped")
    assert demo_run.command("resume", demo_run.run) == 2
    line = error_line(capsys, "ff-train")
    assert "SHA-256 differs" in line and "resume=false" in line and "--no-verify" not in line


def test_a_failed_ff_predict_leaves_no_output_folder(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    assert predict_cli(["--run", str(tmp_path / "no_run"), "--out", str(out)]) == 2
    assert "not a run folder" in error_line(capsys, "ff-predict")
    assert list(tmp_path.iterdir()) == []


def read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every attempt of this process to create, write, replace or make a folder inside
    ``folder`` fail as on a read-only file system (EROFS); reading works. (Root ignores file
    modes, so a chmod would not do.)"""
    top = folder.resolve()

    def inside(path) -> bool:
        return isinstance(path, str | os.PathLike) and Path(path).resolve().is_relative_to(top)

    def refuse(path) -> OSError:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    real_open, real_os_open = builtins.open, os.open
    real_replace, real_mkdir = os.replace, os.mkdir

    def guarded_open(file, mode="r", *args, **kwargs):
        if inside(file) and any(flag in mode for flag in "wax+"):
            raise refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_replace(src, dst, *args, **kwargs):
        if inside(dst):
            raise refuse(dst)
        return real_replace(src, dst, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if inside(path) and not os.path.exists(path):
            raise refuse(path)
        return real_mkdir(path, *args, **kwargs)

    for target, name, guard in (
        (builtins, "open", guarded_open),
        (io, "open", guarded_open),
        (os, "open", guarded_os_open),
        (os, "replace", guarded_replace),
        (os, "mkdir", guarded_mkdir),
    ):
        monkeypatch.setattr(target, name, guard)


def test_a_run_on_a_read_only_disk_is_evaluated_and_predicted(
    demo_run, tmp_path, monkeypatch, capsys
):
    """Readers never write the run (calibration happens when training ends): a run on a
    read-only disk is evaluated and predicted, its outputs going elsewhere."""
    run = demo_run.restore()
    read_only(run, monkeypatch)
    with pytest.raises(OSError, match="Read-only file system"):
        (run / "probe").write_text("x")
    for command in ("ff-eval", "ff-predict"):
        assert demo_run.command(command, tmp_path / command) == 0, capsys.readouterr().err
    assert (tmp_path / "ff-predict" / "maps" / "anomaly_images").is_dir()
