"""Frozen-encoder feature cache: the encoder's tap features per training image, computed once.

The encoder never trains, so without augmentation (the INP-Former recipe) every epoch feeds it
the same images and gets the same taps. :func:`cache_features` runs it once over the training
set; the loop then trains on the cached taps (``model.features_from_taps``), skipping the most
expensive forward pass of every later epoch.

With augmentation the cache can hold ``views`` augmented versions per image: view k of item i
is item i of the training set at epoch k (its augmentation is seeded by (seed, k, i)), and
epoch e trains on view e mod K. With K >= the number of epochs this is exactly the uncached
augmentation stream; with fewer views, each image's K augmentations repeat.

Storage:

- ``memory``: one tensor (items x views x taps x tokens x channels), bfloat16 by default
  (half the memory of float32; the taps are rounded to 8 significant bits);
- ``disk``: one safetensors file per item and view under ``dir``, named by a hash of the
  exact network input (so of the image content, input geometry, crop, augmentation view),
  the encoder's fingerprint (variant, taps, position-embedding mode and a hash of its weights),
  the compute precision and the storage dtype. Any change to one of them is a different file:
  stale features are never reused, and runs that share inputs and encoder share the files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from filterformer.errors import ConfigError
from filterformer.io import atomic_path
from filterformer.models.encoder import DinoEncoder
from filterformer.progress import progress_bar

STORAGES = ("memory", "disk")
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class FeatureCacheSettings:
    """How to cache (values come from the config's ``train.feature_cache``)."""

    storage: str = "memory"
    dir: str | Path | None = None
    """Folder of the disk cache (``storage="disk"`` only)."""
    views: int = 1
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.storage not in STORAGES:
            raise ConfigError(
                f"train.feature_cache.storage={self.storage!r} is unknown; use one of "
                f"{', '.join(STORAGES)}."
            )
        if self.storage == "disk" and not self.dir:
            raise ConfigError("train.feature_cache.storage=disk needs train.feature_cache.dir.")
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"train.feature_cache.dtype={self.dtype!r} is unknown; use one of "
                f"{', '.join(DTYPES)}."
            )
        if self.views < 1:
            raise ConfigError(f"train.feature_cache.views={self.views} must be at least 1.")


class TapFeatures(Dataset[torch.Tensor]):
    """Cached taps of a training set: item i is a taps x tokens x channels tensor.

    :meth:`set_epoch` picks the view (epoch mod views). Items keep the storage dtype; the loop
    casts them on the device.
    """

    def __init__(
        self,
        grid: tuple[int, int],
        views: int,
        memory: torch.Tensor | None = None,
        files: Sequence[Sequence[Path]] | None = None,
        computed: int = 0,
    ) -> None:
        self.grid = grid
        self.views = views
        self.memory = memory
        self.files = files
        self.computed = computed
        """How many item views the encoder computed (the rest came from the disk cache)."""
        self.view = 0

    def set_epoch(self, epoch: int) -> None:
        """Train epoch ``epoch`` on view ``epoch mod views``."""
        self.view = epoch % self.views

    def __len__(self) -> int:
        return len(self.memory) if self.memory is not None else len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.memory is not None:
            return self.memory[index, self.view]
        return load_file(str(self.files[index][self.view]))["taps"]


def encoder_fingerprint(encoder: DinoEncoder) -> str:
    """SHA-256 of what decides the encoder's output: variant, taps, settings and every weight."""
    digest = hashlib.sha256(
        repr((encoder.variant, encoder.taps, encoder.official_pos_interp)).encode()
    )
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def cache_features(
    encoder: DinoEncoder,
    images: Dataset,
    settings: FeatureCacheSettings,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    amp_bf16: bool = False,
    progress: bool = True,
) -> TapFeatures:
    """Run ``encoder`` over every item (and view) of ``images`` once and keep the taps.

    ``images`` is a Dataset of normalised 3 x h x w tensors; for ``views > 1`` it must have
    ``set_epoch`` (view k is its epoch k). ``amp_bf16`` computes under bfloat16 autocast
    on CUDA, as training would.
    """
    if settings.views > 1 and not hasattr(images, "set_epoch"):
        raise ConfigError(
            f"train.feature_cache.views={settings.views} needs augmented training images (a "
            "dataset with set_epoch); without augmentation every view is the same: use views=1."
        )
    device = torch.device(device)
    amp = amp_bf16 and device.type == "cuda"
    dtype = DTYPES[settings.dtype]
    grid = encoder.grid_size(tuple(images[0].shape[-2:]))
    count, views = len(images), settings.views
    if settings.storage == "disk":
        folder = Path(settings.dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        prefix = f"{encoder_fingerprint(encoder)}|amp={amp}|{settings.dtype}".encode()
        files = [[Path()] * views for _ in range(count)]
        memory = None
    else:
        files = None
        shape = (count, views, len(encoder.taps), grid[0] * grid[1], encoder.embed_dim)
        memory = torch.empty(shape, dtype=dtype)
    encoder.to(device).eval()
    pending: list[tuple[int, int, torch.Tensor]] = []
    computed = 0

    def encode() -> None:
        batch = torch.stack([image for _, _, image in pending]).to(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            taps = torch.stack(encoder(batch), dim=1).to("cpu", dtype)  # B x taps x N x C
        for (index, view, _), item_taps in zip(pending, taps, strict=True):
            if files is None:
                memory[index, view] = item_taps
            else:
                with atomic_path(files[index][view]) as tmp:
                    save_file({"taps": item_taps.contiguous()}, str(tmp))
        pending.clear()

    items = progress_bar(
        _item_views(images, views),
        total=count * views,
        desc="caching encoder features",
        enabled=progress,
    )
    for index, view, image in items:
        if files is not None:
            files[index][view] = folder / f"{_input_hash(prefix, image)}.safetensors"
            if files[index][view].is_file():
                continue
        pending.append((index, view, image))
        computed += 1
        if len(pending) == batch_size:
            encode()
    if pending:
        encode()
    return TapFeatures(grid, views, memory=memory, files=files, computed=computed)


def _item_views(images: Dataset, views: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(index, view, network input) for every item and view; view k is the images' epoch k."""
    for view in range(views):
        if views > 1:
            images.set_epoch(view)
        for index in range(len(images)):
            yield index, view, images[index]
    if views > 1:
        images.set_epoch(0)


def _input_hash(prefix: bytes, image: torch.Tensor) -> str:
    """Hash of the encoder identity ``prefix`` and the exact network input (shape and values)."""
    digest = hashlib.sha256(prefix)
    digest.update(repr((tuple(image.shape), str(image.dtype))).encode())
    digest.update(_tensor_bytes(image))
    return digest.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().to("cpu").reshape(-1).view(torch.uint8).numpy().tobytes()
