"""Checkpoints: trainable weights in safetensors, training state in torch, metadata in JSON.

A checkpoint ``<name>`` in a folder is one unit of up to three files:

- ``<name>.json``: metadata (model name, encoder variant, encoder-weights hash, step, epoch,
  resolved config, tensor shapes, and whatever the caller adds such as metrics) and, under
  ``files``, the names and SHA-256 of the two files below;
- ``<name>.<token>.safetensors``: the model's trainable weights only (the frozen encoder comes
  from its own weights file, identified by hash), plus the step in the safetensors header;
- ``<name>.<token>.state.pt`` (only for resumable checkpoints): optimiser, scheduler and random
  states. safetensors stores tensors only, so this nested state is a plain ``torch.save``
  file of tensors and Python scalars, loaded with ``weights_only=True``.

Saving writes the weights and the state under new names (a fresh random token), then
atomically replaces the JSON: that rename is the one step that makes the new checkpoint
current. Until it, the previous checkpoint is complete and current; after it, the previous
files are deleted. A kill at any instant thus leaves the old or the new checkpoint whole, plus
at most files that no JSON names, which :func:`remove_stale_files` deletes on the next start.
Loading checks each file's SHA-256 against the JSON and names the file on a mismatch; a JSON
that records no SHA-256 for a file is refused too, so that deleting a hash cannot turn the
check off. ``verify=False`` skips both (the user's explicit choice): only then does a
checkpoint saved before the JSON named its files (``<name>.safetensors``, ``<name>.state.pt``,
no hashes) load. Files are written from Python (serialised in memory first), so that a full
disk is an ``OSError`` naming the file, never a library's own error.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from filterformer.errors import CheckpointError, FilterformerError
from filterformer.io import atomic_path, check_name, read_json, remove_partials, write_json
from filterformer.models.encoder import weights_sha256

VERIFY_FIX = (
    "Restore it from a copy of the run folder or use another checkpoint (--no-verify, or "
    "verify=False, loads it anyway)."
)
"""What a reader can do about a file that fails verification (:func:`load_checkpoint`)."""
RESUME_FIX = (
    "Restore the run folder from a copy, or start a new run (resume=false, another run_dir)."
)
"""What ff-train can do about a run that fails verification when resumed."""
IDENTITY_KEYS = ("model", "encoder", "encoder_weights")
"""Metadata that must match between a checkpoint and the model it is loaded into."""

WEIGHTS_SUFFIX, STATE_SUFFIX = ".safetensors", ".state.pt"
_VERSIONED = re.compile(r"(?P<name>.+)\.[0-9a-f]{12}(\.safetensors|\.state\.pt)")
"""A weights or state file saved under a checkpoint's name and a token."""


def _no_hook(name: str, stage: str) -> None:
    """The default :data:`save_hook`: nothing."""


save_hook: Callable[[str, str], None] = _no_hook
"""Called with the checkpoint's name during :func:`save_checkpoint`, after the stages
``"weights"``, ``"state"`` (when saved) and ``"committed"`` (the JSON replaced, the old files
not yet deleted): a seam for tests that interrupt a save at each of these points."""


class CheckpointFiles(NamedTuple):
    """The files of one checkpoint, as its metadata names them."""

    weights: Path
    meta: Path
    state: Path | None
    """None for a checkpoint saved without training state."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns besides filling the model's weights."""

    meta: dict[str, Any]
    training_state: dict[str, Any] | None
    files: CheckpointFiles
    """The files that were read."""


def metadata_file(path: str | Path) -> Path:
    """The JSON of the checkpoint ``path``: ``<folder>/<name>`` or any of its files."""
    path = Path(path)
    match = _VERSIONED.fullmatch(path.name)
    name = match["name"] if match else path.name.removesuffix(".json")
    return path.with_name(name.removesuffix(WEIGHTS_SUFFIX) + ".json")


def has_checkpoint(path: str | Path) -> bool:
    """Whether the checkpoint ``path`` exists (its JSON, written last, is what makes it)."""
    return metadata_file(path).is_file()


def checkpoint_files(path: str | Path) -> CheckpointFiles:
    """The (weights, metadata, training-state) files of the checkpoint ``path``."""
    meta_file = metadata_file(path)
    return _files(meta_file, read_checkpoint_meta(meta_file))


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    *,
    meta: Mapping[str, Any],
    training_state: Mapping[str, Any] | None = None,
) -> None:
    """Save ``model.trainable_state_dict()`` with ``meta`` (holding ``step`` and the identity).

    The checkpoint replaces an earlier one of the same name as a unit (module docstring).
    """
    missing = [key for key in ("step", *IDENTITY_KEYS) if key not in meta]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    meta_file = metadata_file(path)
    meta_file.parent.mkdir(parents=True, exist_ok=True)
    stem = meta_file.with_suffix(f".{secrets.token_hex(6)}")
    step = int(meta["step"])
    weights = {
        name: tensor.detach().to("cpu", copy=True).contiguous()
        for name, tensor in model.trainable_state_dict().items()
    }
    files = {
        "weights": _write(
            stem.with_name(stem.name + WEIGHTS_SUFFIX),
            save(weights, metadata={"step": str(step)}),
        )
    }
    save_hook(meta_file.stem, "weights")
    if training_state is not None:
        buffer = io.BytesIO()
        torch.save({**training_state, "step": step}, buffer)
        files["state"] = _write(stem.with_name(stem.name + STATE_SUFFIX), buffer.getvalue())
        save_hook(meta_file.stem, "state")
    shapes = {name: list(tensor.shape) for name, tensor in weights.items()}
    write_json(meta_file, {**meta, "shapes": shapes, "files": files})
    save_hook(meta_file.stem, "committed")
    _remove_unnamed(meta_file)


def remove_stale_files(folder: str | Path) -> int:
    """Delete what interrupted saves left in a checkpoint folder; return how many files.

    That is temporary files, and weights or state files that no checkpoint's JSON names.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    count = remove_partials(folder, recursive=False)
    names = {match["name"] for match in map(_VERSIONED.fullmatch, os.listdir(folder)) if match}
    for name in sorted(names):
        count += _remove_unnamed(folder / f"{name}.json")
    return count


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, with a clear error when it is missing or broken."""
    meta_file = metadata_file(path)
    if not meta_file.is_file():
        raise CheckpointError(
            f"{meta_file}: checkpoint not found. Check the run folder, or train first with "
            "ff-train."
        )
    fix = "Restore it from a copy of the run folder, or use another checkpoint."
    try:
        meta = read_json(meta_file, "checkpoint metadata", fix)
    except FilterformerError as err:
        raise CheckpointError(str(err)) from None
    step = meta.get("step") if isinstance(meta, dict) else None
    if not isinstance(step, int) or isinstance(step, bool):
        raise CheckpointError(
            f"{meta_file}: not checkpoint metadata (an object with an integer 'step'). {fix}"
        )
    return meta


def verify_checkpoint(
    path: str | Path, *, with_training_state: bool = False, fix: str = VERIFY_FIX
) -> dict[str, Any]:
    """Check a checkpoint's files against the SHA-256 its metadata records (which it must),
    without loading them; return the metadata. :class:`CheckpointError` names what differs."""
    meta_file = metadata_file(path)
    meta = read_checkpoint_meta(meta_file)
    files = _files(meta_file, meta)
    _require_hashes(files, meta, with_training_state, fix)
    _check_file(files, "weights", meta, True, fix)
    if with_training_state and files.state is not None:
        _check_file(files, "state", meta, True, fix)
    return meta


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    *,
    expected: Mapping[str, Any],
    with_training_state: bool = False,
    verify: bool = True,
    fix: str = VERIFY_FIX,
) -> LoadedCheckpoint:
    """Load a checkpoint's weights into ``model`` after checking that it fits.

    ``expected`` gives the identity of ``model`` (``model``, ``encoder``, ``encoder_weights``);
    any difference, any missing or mis-shaped tensor and (with ``verify``) any file whose
    SHA-256 differs from the one recorded in the metadata, or is not recorded, raises
    :class:`CheckpointError` naming what differs (and, for verification, ``fix``: what to do).
    ``model`` is not modified unless every check passes.
    """
    meta_file = metadata_file(path)
    meta = read_checkpoint_meta(meta_file)
    files = _files(meta_file, meta)
    if verify:
        _require_hashes(files, meta, with_training_state, fix)
    _check_identity(files.weights, meta, expected)
    _check_file(files, "weights", meta, verify, fix)
    try:
        weights = load_file(str(files.weights))
        with safe_open(str(files.weights), framework="pt") as fh:
            saved_step = (fh.metadata() or {}).get("step")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{files.weights}: unreadable safetensors file ({err}).") from None
    if saved_step != str(meta["step"]):
        raise CheckpointError(
            f"{files.weights}: weights are from step {saved_step} but the metadata says step "
            f"{meta['step']}; the save was interrupted. Use another checkpoint of the run."
        )
    _check_shapes(files.weights, weights, model.trainable_state_dict())
    training_state = None
    if with_training_state:
        training_state = _read_training_state(files, meta, verify, fix)
    result = model.load_state_dict(weights, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # guaranteed by _check_shapes
    return LoadedCheckpoint(meta=meta, training_state=training_state, files=files)


def _write(file: Path, data: bytes) -> dict[str, str]:
    """Write a new file of a checkpoint, complete and on disk; return its name and SHA-256."""
    with atomic_path(file) as tmp:
        tmp.write_bytes(data)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return {"name": file.name, "sha256": weights_sha256(file)}


def _files(meta_file: Path, meta: Mapping[str, Any]) -> CheckpointFiles:
    recorded = meta.get("files")
    if recorded is None:  # saved before the metadata named its files
        stem = meta_file.with_suffix("")
        state = stem.with_name(stem.name + STATE_SUFFIX)
        return CheckpointFiles(stem.with_name(stem.name + WEIGHTS_SUFFIX), meta_file, state)
    if not isinstance(recorded, Mapping) or not isinstance(recorded.get("weights"), Mapping):
        raise CheckpointError(_malformed(meta_file, "its 'files' must name the weights file"))
    state = recorded.get("state")
    if state is not None and not isinstance(state, Mapping):
        raise CheckpointError(_malformed(meta_file, "files.state must be null or a file entry"))
    return CheckpointFiles(
        meta_file.with_name(_file_name(meta_file, recorded["weights"])),
        meta_file,
        None if state is None else meta_file.with_name(_file_name(meta_file, state)),
    )


def _file_name(meta_file: Path, entry: Mapping[str, Any]) -> str:
    """The name of a file the metadata lists: a plain name in the checkpoint's folder."""
    name = entry.get("name")
    try:
        return check_name(name, f"{meta_file}: file name")
    except FilterformerError:
        raise CheckpointError(
            _malformed(meta_file, f"a file entry names {name!r}, not a file beside it")
        ) from None


def _malformed(meta_file: Path, what: str) -> str:
    return (
        f"{meta_file}: malformed checkpoint metadata ({what}). Restore it from a copy of the run "
        "folder, or use another checkpoint."
    )


def _require_hashes(
    files: CheckpointFiles, meta: Mapping[str, Any], with_state: bool, fix: str
) -> None:
    """Refuse metadata that records no SHA-256 for a file about to be read (verification on)."""
    for kind in ("weights", "state") if with_state and files.state else ("weights",):
        recorded = (meta.get("files") or {}).get(kind) or {}
        if not isinstance(recorded.get("sha256"), str):
            raise CheckpointError(
                f"{files.meta}: records no SHA-256 of its {kind} file, so it cannot be "
                f"verified (saved by an older filterformer, or the hash was removed). {fix}"
            )


def _remove_unnamed(meta_file: Path) -> int:
    """Delete the weights and state files of a checkpoint's name that its JSON does not name.

    Without a JSON, every file saved under the name and a token goes; an unreadable JSON
    leaves everything in place.
    """
    name = meta_file.stem
    candidates = [
        meta_file.with_name(entry)
        for entry in os.listdir(meta_file.parent)
        if (match := _VERSIONED.fullmatch(entry)) and match["name"] == name
    ]
    keep: set[Path] = set()
    if meta_file.is_file():
        try:
            keep = {file for file in _files(meta_file, read_checkpoint_meta(meta_file)) if file}
        except CheckpointError:
            return 0
        candidates += [meta_file.with_name(name + s) for s in (WEIGHTS_SUFFIX, STATE_SUFFIX)]
    stale = [file for file in candidates if file not in keep and file.is_file()]
    for file in stale:
        file.unlink(missing_ok=True)
    return len(stale)


def _check_file(
    files: CheckpointFiles, kind: str, meta: Mapping[str, Any], verify: bool, fix: str
) -> None:
    """Require the checkpoint's ``kind`` file ("weights" or "state") and, with ``verify``,
    the SHA-256 its metadata records for it."""
    file = getattr(files, kind)
    if not file.is_file():
        raise CheckpointError(
            f"{file}: missing, though {files.meta.name} names it: the run folder is incomplete "
            "(copy all of it again, or use another checkpoint), or a training run replaced the "
            "checkpoint while it was read (try again)."
        )
    recorded = (meta.get("files") or {}).get(kind, {}).get("sha256")
    if verify and recorded is not None and weights_sha256(file) != recorded:
        raise CheckpointError(
            f"{file}: SHA-256 differs from the one recorded in {files.meta.name}: the file is "
            f"corrupted or was changed. {fix}"
        )


def _check_identity(file: Path, meta: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    differences = [
        f"{key}: checkpoint has {meta.get(key)!r}, the model has {expected[key]!r}"
        for key in IDENTITY_KEYS
        if key in expected and meta.get(key) != expected[key]
    ]
    if differences:
        raise CheckpointError(
            f"{file}: checkpoint does not fit this model ({'; '.join(differences)}). Load it with "
            "the model, encoder and encoder weights it was trained with (see its .json)."
        )


def _check_shapes(
    file: Path, weights: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
) -> None:
    problems = [f"missing {name}" for name in own if name not in weights]
    problems += [f"unexpected {name}" for name in weights if name not in own]
    problems += [
        f"{name}: {tuple(weights[name].shape)} vs model {tuple(tensor.shape)}"
        for name, tensor in own.items()
        if name in weights and weights[name].shape != tensor.shape
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise CheckpointError(
            f"{file}: tensors do not match the model ({shown}). The model settings (e.g. "
            "number of INPs or decoder depth) differ from the run that saved it."
        )


def _read_training_state(
    files: CheckpointFiles, meta: Mapping[str, Any], verify: bool, fix: str
) -> dict[str, Any]:
    if files.state is None or (not files.state.is_file() and "files" not in meta):
        raise CheckpointError(
            f"{files.meta}: no training state with this checkpoint, so training cannot resume "
            "from it. Resume from checkpoints/last, or start a new run."
        )
    _check_file(files, "state", meta, verify, fix)
    try:
        state = torch.load(files.state, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as err:
        raise CheckpointError(
            f"{files.state}: unreadable training state ({err}). Resume from another copy of the "
            "run folder, or start a new run (resume=false)."
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{files.state}: not a training state (a dictionary). Resume from another copy of "
            "the run folder, or start a new run (resume=false)."
        )
    if state.get("step") != meta["step"]:
        raise CheckpointError(
            f"{files.state}: training state is from step {state.get('step')} but the weights "
            f"are from step {meta['step']}; the save was interrupted. Start a new run "
            "(resume=false)."
        )
    return state
