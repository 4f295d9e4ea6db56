"""Checkpoints round-trip trainable weights, metadata and training state, and refuse misfits."""

import errno
import hashlib
import json
import os
import pickle
import re
import resource
import signal
import stat

import pytest
import torch
from safetensors.torch import save_file

from filterformer.errors import CheckpointError
from filterformer.io import PARTIAL_MARK
from filterformer.training import checkpoint
from filterformer.training.checkpoint import (
    checkpoint_files,
    load_checkpoint,
    remove_stale_files,
    save_checkpoint,
)

IDENTITY = {"model": "filterformer", "encoder": "tiny_random", "encoder_weights": "abc123"}


class Toy(torch.nn.Module):
    """A frozen 'encoder' and a trainable head, like the real models."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(2, 2).requires_grad_(False)
        self.head = torch.nn.Linear(2, width)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}


def save(path, net, step=7, training_state=None, **identity):
    meta = {**IDENTITY, **identity, "step": step, "epoch": 1, "config": {"seed": 1}}
    save_checkpoint(path, net, meta=meta, training_state=training_state)


def test_round_trip_restores_trainable_weights_metadata_and_state(tmp_path):
    torch.manual_seed(0)
    src, dst = Toy(), Toy()
    state = {"optimizer": {"lr": 0.5}, "rng": torch.get_rng_state()}
    save(tmp_path / "last", src, training_state=state)

    weights, meta_file, state_file = checkpoint_files(tmp_path / "last")
    assert {p.name for p in tmp_path.iterdir()} == {weights.name, meta_file.name, state_file.name}
    meta = json.loads(meta_file.read_text())
    assert meta["shapes"] == {"head.weight": [3, 2], "head.bias": [3]}
    assert meta["encoder_weights"] == "abc123" and meta["config"] == {"seed": 1}

    encoder_before = dst.encoder.weight.clone()
    loaded = load_checkpoint(weights, dst, expected=IDENTITY, with_training_state=True)
    assert torch.equal(dst.head.weight, src.head.weight)
    assert torch.equal(dst.encoder.weight, encoder_before)  # the encoder is not in checkpoints
    assert loaded.meta["step"] == 7
    assert loaded.training_state["optimizer"] == {"lr": 0.5}
    assert torch.equal(loaded.training_state["rng"], state["rng"])


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        ({"encoder": "dinov2_vitb14_reg"}, "encoder: checkpoint has 'dinov2_vitb14_reg'"),
        ({"encoder_weights": "fff"}, "encoder_weights: checkpoint has 'fff'"),
        ({"model": "inpformer"}, "model: checkpoint has 'inpformer'"),
    ],
)
def test_refuses_other_model_encoder_or_weights(tmp_path, identity, message):
    save(tmp_path / "last", Toy(), **identity)
    model = Toy()
    before = model.head.weight.clone()
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "last", model, expected=IDENTITY)
    assert torch.equal(model.head.weight, before)


def test_refuses_other_shapes_naming_the_tensor(tmp_path):
    save(tmp_path / "last", Toy(width=3))
    with pytest.raises(CheckpointError, match=r"head.weight: \(3, 2\) vs model \(4, 2\)"):
        load_checkpoint(tmp_path / "last", Toy(width=4), expected=IDENTITY)


def test_missing_checkpoint_and_missing_training_state(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope", Toy(), expected=IDENTITY)
    save(tmp_path / "best_inp", Toy())
    with pytest.raises(CheckpointError, match="no training state"):
        load_checkpoint(tmp_path / "best_inp", Toy(), expected=IDENTITY, with_training_state=True)


class Interrupted(Exception):
    """Stands for a kill at one point of a save."""


@pytest.mark.parametrize("stage", ["weights", "state", "committed"])
def test_a_save_interrupted_anywhere_leaves_one_whole_checkpoint(tmp_path, monkeypatch, stage):
    """A checkpoint becomes current in one step (its JSON): until then the previous one is
    whole, afterwards the new one; what the interrupted save left is removed on the next start."""
    old, new = Toy(), Toy()
    save(tmp_path / "last", old, step=7, training_state={"x": 1})

    def interrupt(name, reached):
        if (name, reached) == ("last", stage):
            raise Interrupted

    monkeypatch.setattr(checkpoint, "save_hook", interrupt)
    with pytest.raises(Interrupted):
        save(tmp_path / "last", new, step=8, training_state={"x": 2})
    monkeypatch.undo()
    (tmp_path / f".last{PARTIAL_MARK}1234.json").write_text("{")  # a killed JSON write

    current = new if stage == "committed" else old
    loaded = Toy()
    state = load_checkpoint(tmp_path / "last", loaded, expected=IDENTITY, with_training_state=True)
    assert state.meta["step"] == (8 if stage == "committed" else 7)
    assert torch.equal(loaded.head.weight, current.head.weight)
    assert remove_stale_files(tmp_path) >= 2  # the other weights file and the partial JSON
    assert sorted(tmp_path.iterdir()) == sorted(checkpoint_files(tmp_path / "last"))
    load_checkpoint(tmp_path / "last", Toy(), expected=IDENTITY, with_training_state=True)


def test_a_new_save_replaces_the_files_of_the_previous_one(tmp_path):
    save(tmp_path / "best_inp", Toy(), step=1)
    save(tmp_path / "best_inp", Toy(), step=2)
    files = checkpoint_files(tmp_path / "best_inp")
    assert files.state is None
    assert sorted(tmp_path.iterdir()) == sorted([files.weights, files.meta])
    assert remove_stale_files(tmp_path) == 0


@pytest.mark.parametrize("kind", ["weights", "state"])
def test_a_changed_byte_is_refused_naming_the_file_unless_verify_is_off(tmp_path, kind):
    src = Toy()
    save(tmp_path / "last", src, training_state={"optimizer": {"lr": 0.5}})
    files = checkpoint_files(tmp_path / "last")
    file = getattr(files, kind)
    recorded = json.loads(files.meta.read_text())["files"][kind]
    assert recorded == {"name": file.name, "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor's (or state's) data
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(file))}: SHA-256 differs"):
        load_checkpoint(tmp_path / "last", Toy(), expected=IDENTITY, with_training_state=True)
    dst = Toy()  # the user's explicit choice: load without checking
    load_checkpoint(tmp_path / "last", dst, expected=IDENTITY, verify=False)
    changed = sum(
        int((dst.trainable_state_dict()[name] != tensor).sum())
        for name, tensor in src.trainable_state_dict().items()
    )
    assert changed == (1 if kind == "weights" else 0)  # loaded as it is, flipped bit included


def test_a_checkpoint_of_the_earlier_layout_loads_unverified_only(tmp_path):
    """Saved before the JSON named its files: <name>.safetensors, <name>.state.pt, no hashes.
    Nothing can verify it, so only verify=False loads it; its step, in all three files, still
    tells an interrupted save."""
    src = Toy()
    weights = {k: v.contiguous() for k, v in src.trainable_state_dict().items()}
    save_file(weights, str(tmp_path / "last.safetensors"), metadata={"step": "7"})
    torch.save({"x": 1, "step": 7}, tmp_path / "last.state.pt")
    (tmp_path / "last.json").write_text(json.dumps({**IDENTITY, "step": 7, "epoch": 1}))
    with pytest.raises(CheckpointError, match="no SHA-256 of its weights.*--no-verify"):
        load_checkpoint(tmp_path / "last", Toy(), expected=IDENTITY)
    dst = Toy()
    loaded = load_checkpoint(
        tmp_path / "last", dst, expected=IDENTITY, with_training_state=True, verify=False
    )
    assert torch.equal(dst.head.weight, src.head.weight) and loaded.training_state["x"] == 1
    assert remove_stale_files(tmp_path) == 0

    save_file(weights, str(tmp_path / "last.safetensors"), metadata={"step": "8"})
    with pytest.raises(CheckpointError, match="interrupted"):
        load_checkpoint(tmp_path / "last", Toy(), expected=IDENTITY, verify=False)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoint_files_get_the_permissions_the_umask_allows(tmp_path, umask):
    previous = os.umask(umask)
    try:
        save(tmp_path / "last", Toy(), training_state={"x": 1})
    finally:
        os.umask(previous)
    files = checkpoint_files(tmp_path / "last")
    assert {stat.S_IMODE(file.stat().st_mode) for file in files} == {0o666 & ~umask}


def with_files(meta, **entries):
    return {**meta, "files": {**meta["files"], **entries}}


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda meta: [meta], "not checkpoint metadata"),
        (lambda meta: {**meta, "step": "7"}, "not checkpoint metadata"),
        (lambda meta: with_files(meta, weights=None), "must name the weights"),
        (lambda meta: {**meta, "files": [1]}, "must name the weights"),
        (lambda meta: with_files(meta, state=3), "files.state must be"),
        (
            lambda meta: with_files(meta, weights={"name": "../../x.safetensors"}),
            "names '../../x.safetensors', not a file beside it",
        ),
    ],
)
def test_malformed_metadata_is_refused_by_name(tmp_path, edit, words):
    """A list, a null or a path for a file entry: one CheckpointError, never a TypeError."""
    save(tmp_path / "last", Toy(), training_state={"x": 1})
    meta_file = tmp_path / "last.json"
    meta_file.write_text(json.dumps(edit(json.loads(meta_file.read_text()))))
    for verify in (True, False):
        with pytest.raises(CheckpointError, match=f"{meta_file}: .*{re.escape(words)}"):
            load_checkpoint(tmp_path / "last", Toy(), expected=IDENTITY, verify=verify)


@pytest.mark.parametrize("kind", ["weights", "state"])
def test_metadata_without_a_hash_is_refused_unless_unverified(tmp_path, kind):
    """Deleting a recorded SHA-256 must not turn the check off (a downgrade)."""
    save(tmp_path / "last", Toy(), training_state={"x": 1})
    meta_file = tmp_path / "last.json"
    meta = json.loads(meta_file.read_text())
    del meta["files"][kind]["sha256"]
    meta_file.write_text(json.dumps(meta))
    load = {"expected": IDENTITY, "with_training_state": True}
    with pytest.raises(CheckpointError, match=f"records no SHA-256 of its {kind} file"):
        load_checkpoint(tmp_path / "last", Toy(), **load)
    load_checkpoint(tmp_path / "last", Toy(), verify=False, **load)


def test_an_unreadable_training_state_is_named(tmp_path):
    save(tmp_path / "last", Toy(), training_state={"x": 1})
    state_file = checkpoint_files(tmp_path / "last").state
    for content in (b"", b"[1, 2, 3]\n", b"PK\x03\x04broken"):
        state_file.write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{state_file}: unreadable training state"):
            load_checkpoint(
                tmp_path / "last", Toy(), expected=IDENTITY, with_training_state=True, verify=False
            )


def in_child_with_file_size_limit(limit: int, job) -> tuple[str, int | None, str]:
    """Run ``job`` in a forked child whose files may not grow beyond ``limit`` bytes, as on a
    full disk (the kernel refuses the write; SIGXFSZ is ignored so the write fails instead);
    return (exception type or "ok", its errno, its message)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        try:
            job()
            outcome = ("ok", None, "")
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            outcome = (type(err).__name__, getattr(err, "errno", None), str(err))
        os.write(write_end, pickle.dumps(outcome))
        os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 1 << 16):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return pickle.loads(data)


def test_a_full_disk_while_saving_is_an_os_error_naming_the_file(tmp_path):
    """safetensors and torch.save reported a refused write as their own errors (a traceback,
    exit 1); written from Python, it is the OSError that names the file, and nothing is left."""
    kind, code, message = in_child_with_file_size_limit(
        64, lambda: save(tmp_path / "last", Toy(width=64), training_state={"x": 1})
    )
    assert (kind, code) == ("OSError", errno.EFBIG), message
    assert re.search(r"last\.[0-9a-f]{12}\.safetensors", message)
    assert list(tmp_path.iterdir()) == []
