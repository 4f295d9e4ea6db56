"""Checkpoints: trainable weights in safetensors, metadata in JSON, training state in torch.

A checkpoint ``<name>`` in a folder is up to three files, each written atomically:

- ``<name>.safetensors``: the model's trainable weights only (the frozen encoder comes from its
  own weights file, identified by hash), plus the step in the safetensors header;
- ``<name>.json``: metadata (model name, encoder variant, encoder-weights hash, step, epoch,
  resolved config, tensor shapes, and whatever the caller adds such as metrics);
- ``<name>.state.pt`` (only for resumable checkpoints): optimiser, scheduler and random
  states. safetensors stores tensors only, so this nested state is a plain ``torch.save``
  file of tensors and Python scalars, loaded with ``weights_only=True``.

The state file is written first and the JSON last; all three carry the step, so a save
interrupted between files is detected on load instead of silently mixing two steps.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from filterformer.errors import CheckpointError
from filterformer.io import atomic_path, write_json

IDENTITY_KEYS = ("model", "encoder", "encoder_weights")
"""Metadata that must match between a checkpoint and the model it is loaded into."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns besides filling the model's weights."""

    meta: dict[str, Any]
    training_state: dict[str, Any] | None


def checkpoint_files(path: str | Path) -> tuple[Path, Path, Path]:
    """(weights, metadata, training-state) files of the checkpoint ``path`` (suffix optional)."""
    stem = Path(path)
    if stem.suffix == ".safetensors":
        stem = stem.with_suffix("")
    return (
        stem.with_name(stem.name + ".safetensors"),
        stem.with_name(stem.name + ".json"),
        stem.with_name(stem.name + ".state.pt"),
    )


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    *,
    meta: Mapping[str, Any],
    training_state: Mapping[str, Any] | None = None,
) -> None:
    """Save ``model.trainable_state_dict()`` with ``meta`` (holding ``step`` and the identity)."""
    missing = [key for key in ("step", *IDENTITY_KEYS) if key not in meta]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    weights_file, meta_file, state_file = checkpoint_files(path)
    step = int(meta["step"])
    weights = {
        name: tensor.detach().to("cpu", copy=True).contiguous()
        for name, tensor in model.trainable_state_dict().items()
    }
    if training_state is not None:
        with atomic_path(state_file) as tmp:
            torch.save({**training_state, "step": step}, tmp)
    else:
        state_file.unlink(missing_ok=True)
    with atomic_path(weights_file) as tmp:
        save_file(weights, str(tmp), metadata={"step": str(step)})
    shapes = {name: list(tensor.shape) for name, tensor in weights.items()}
    write_json(meta_file, {**meta, "shapes": shapes})


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, with a clear error when it is missing or broken."""
    weights_file, meta_file, _ = checkpoint_files(path)
    if not weights_file.is_file() or not meta_file.is_file():
        raise CheckpointError(
            f"{weights_file}: checkpoint not found (need both {weights_file.name} and "
            f"{meta_file.name}). Check the run folder, or train first with ff-train."
        )
    try:
        return json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_file}: unreadable checkpoint metadata ({err}).") from None


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    *,
    expected: Mapping[str, Any],
    with_training_state: bool = False,
) -> LoadedCheckpoint:
    """Load a checkpoint's weights into ``model`` after checking that it fits.

    ``expected`` gives the identity of ``model`` (``model``, ``encoder``, ``encoder_weights``);
    any difference, and any missing or mis-shaped tensor, raises :class:`CheckpointError`
    naming what differs. ``model`` is not modified unless every check passes.
    """
    weights_file, _, state_file = checkpoint_files(path)
    meta = read_checkpoint_meta(path)
    _check_identity(weights_file, meta, expected)
    try:
        weights = load_file(str(weights_file))
        with safe_open(str(weights_file), framework="pt") as fh:
            saved_step = (fh.metadata() or {}).get("step")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights_file}: unreadable safetensors file ({err}).") from None
    if saved_step != str(meta["step"]):
        raise CheckpointError(
            f"{weights_file}: weights are from step {saved_step} but the metadata says step "
            f"{meta['step']}; the save was interrupted. Use another checkpoint of the run."
        )
    _check_shapes(weights_file, weights, model.trainable_state_dict())
    training_state = None
    if with_training_state:
        training_state = _read_training_state(state_file, int(meta["step"]))
    result = model.load_state_dict(weights, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # guaranteed by _check_shapes
    return LoadedCheckpoint(meta=meta, training_state=training_state)


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


def _read_training_state(state_file: Path, step: int) -> dict[str, Any]:
    if not state_file.is_file():
        raise CheckpointError(
            f"{state_file}: no training state beside this checkpoint, so training cannot resume "
            "from it. Resume from checkpoints/last, or start a new run."
        )
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    if state.get("step") != step:
        raise CheckpointError(
            f"{state_file}: training state is from step {state.get('step')} but the weights are "
            f"from step {step}; the save was interrupted. Start a new run (resume=false)."
        )
    return state
