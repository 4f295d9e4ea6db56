"""The reference set of a CPR run on disk: ``<run>/references.safetensors``.

CPR scores a test image against the training images themselves, so a CPR run folder keeps
them (uint8, at the network input size) with what was fitted on them once (codebook, block
histograms, neighbours, foreground): ff-eval and ff-predict then need neither the training
data nor a refit. The file is written atomically before training and checked on load against
the run's encoder and input size. Its block histograms have the CPR code's layout (padding
bin first, ``histogram_layout`` in the metadata); those of older files (padding bin last) are
converted when read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from filterformer.data.transforms import InputGeometry
from filterformer.errors import CheckpointError
from filterformer.io import atomic_path
from filterformer.models.cpr.model import CPR
from filterformer.models.cpr.references import ReferenceSet, recount_histograms

REFERENCES_FILE = "references.safetensors"
HISTOGRAM_LAYOUT = "padding_first"
"""Layout of the stored block histograms (the CPR code's, models/grb.py); files without this
metadata entry hold the padding bin last, with the padding at the bottom and right."""


def normalised(images: Sequence[np.ndarray], geometry: InputGeometry) -> torch.Tensor:
    """N x 3 x H x W network inputs of H x W x 3 uint8 images at the input size."""
    return torch.stack([geometry.normalize(image) for image in images])


def save_references(
    run_dir: str | Path, references: ReferenceSet, images: Sequence[np.ndarray], identity: str
) -> Path:
    """Write the fitted state and the uint8 images; ``identity`` names the encoder's weights."""
    path = Path(run_dir) / REFERENCES_FILE
    tensors = {k: v.contiguous() for k, v in references.state().items()}
    tensors["images"] = torch.from_numpy(np.stack(images))
    height, width = images[0].shape[:2]
    meta = {
        "encoder_weights": identity,
        "input_size": f"{height}x{width}",
        "histogram_layout": HISTOGRAM_LAYOUT,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_references(
    run_dir: str | Path, model: CPR, geometry: InputGeometry, identity: str
) -> ReferenceSet:
    """Read the run's reference set into ``model`` after checking that it fits the run."""
    path = Path(run_dir) / REFERENCES_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing. A CPR run keeps its training images and fitted retrieval state "
            "there (ff-train writes it before training); train the run again to recreate it."
        )
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors file ({err}).") from None
    height, width = geometry.input_size
    expected = {"encoder_weights": identity, "input_size": f"{height}x{width}"}
    differing = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if differing:
        raise CheckpointError(
            f"{path}: made for another setup ({differing}: file vs run). Retrain the run, or "
            "load it with the encoder weights and input size it was trained with."
        )
    images = state.pop("images").numpy()
    references = ReferenceSet.from_state(state, normalised(images, geometry))
    if meta.get("histogram_layout") != HISTOGRAM_LAYOUT:
        references.histograms = _padding_first(references, model)
    model.set_references(references)
    return references


def _padding_first(references: ReferenceSet, model: CPR) -> torch.Tensor:
    """The histograms of an older file (padding bin last) in the current layout: the bin moved
    first where no block holds padding, else counted again (the padding sat elsewhere)."""
    padding = references.histograms[..., -1:]
    if not padding.any():
        return torch.cat([padding, references.histograms[..., :-1]], -1)
    return recount_histograms(model.encoder, references, model.settings, prepare=model.prepare)


def bank_summary(model: CPR, references: ReferenceSet) -> str:
    """One line: the float16 bank's size by the formula D x sum_s(h_s w_s) x 2 B per image."""
    with torch.no_grad():
        probe = references.images[:1].to(next(model.heads.parameters()).device)
        grids = [tuple(f.shape[-2:]) for f in model.encoder(probe)]
    dim = model.out_dim
    per_image = dim * sum(h * w for h, w in grids) * 2
    count = len(references.images)
    cells = " + ".join(f"{h}x{w}" for h, w in grids)
    return (
        f"CPR memory bank: {count} reference images x {dim} x ({cells}) x 2 B = "
        f"{per_image / 2**20:.2f} MiB each, {count * per_image / 2**20:.1f} MiB in float16"
    )
