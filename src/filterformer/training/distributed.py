"""One category on several GPUs: torchrun process groups, sharded data, DDP on the trainable part.

    torchrun --nproc_per_node 4 -m filterformer.cli.train category=vial train.batch_size=16

Every process (rank) trains the same model on its share of each global batch:
:func:`training_loader` gives rank r the items r, r + W, r + 2W, ... of the epoch's
permutation (W processes), so the W local batches of a step are exactly the global batch one
process would see. :func:`wrap_trainable` wraps the trainable modules only (the frozen
encoder stays outside, it has no gradients to reduce) in DistributedDataParallel, which
averages the gradients, so every rank takes the same optimiser step. Only rank 0 writes files,
logs and progress bars.

The same loader serves one process (W = 1): the data order is a function of (seed, epoch), so
a resumed run and a multi-process run see the batches of an uninterrupted single-process run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from filterformer.errors import ConfigError
from filterformer.training.seed import seed_worker


@dataclass(frozen=True)
class DistributedContext:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files, logs and progress bars."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process (a process group exists)."""
        return self.world_size > 1

    def local_batch(self, batch_size: int) -> int:
        """Each rank's share of the global ``batch_size``."""
        if batch_size % self.world_size:
            raise ConfigError(
                f"train.batch_size={batch_size} does not split evenly over {self.world_size} "
                "processes; use a multiple of the number of GPUs (torchrun --nproc_per_node)."
            )
        return batch_size // self.world_size

    def barrier(self) -> None:
        """Wait for every rank (no-op for one process)."""
        if self.active:
            dist.barrier()

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over the ranks (``tensor`` itself for one process)."""
        if not self.active:
            return tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor / self.world_size


SINGLE_PROCESS = DistributedContext()


def init_distributed() -> DistributedContext:
    """Join the process group that torchrun describes in the environment, if any.

    Reads RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR / MASTER_PORT through ``env://``); with
    no WORLD_SIZE or WORLD_SIZE=1 this is a single process and nothing is initialised. The
    backend is NCCL on CUDA (and each rank takes GPU LOCAL_RANK), else gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE_PROCESS
    context = DistributedContext(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    return context


def close_distributed() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


class _TrainableStep(nn.Module):
    """DDP's module: the model's trainable children as parameters, ``step`` as forward."""

    def __init__(self, model: nn.Module, step: Callable[[torch.Tensor], dict]) -> None:
        super().__init__()
        frozen = getattr(model, "encoder", None)
        self.trainable = nn.ModuleDict(
            {name: child for name, child in model.named_children() if child is not frozen}
        )
        self.step = step

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.step(batch)


def wrap_trainable(
    model: nn.Module, step: Callable[[torch.Tensor], dict], context: DistributedContext
) -> Callable[[torch.Tensor], dict]:
    """``step`` (batch -> losses) with gradients averaged over the ranks by DDP.

    DDP sees only ``model``'s trainable children (its ``encoder`` is left out), so the frozen
    encoder is neither broadcast nor hooked. One process: ``step`` itself.
    """
    if not context.active:
        return step
    device_ids = [context.local_rank] if torch.cuda.is_available() else None
    return DistributedDataParallel(_TrainableStep(model, step), device_ids=device_ids)


class _EpochIndexed(Dataset):
    """Items addressed by (epoch, index): datasets with ``set_epoch`` stay right in workers.

    Persistent DataLoader workers keep their own copy of the dataset, which a ``set_epoch``
    in the main process never reaches; the epoch travels with every index instead.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class _EpochSampler(Sampler[tuple[int, int]]):
    """This rank's indices of the epoch's seeded permutation, each paired with the epoch."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((epoch, index) for index in self.sampler)


def training_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    context: DistributedContext = SINGLE_PROCESS,
    num_workers: int = 0,
    pin_memory: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """Shuffled, full-batch loader of this rank's share of the global ``batch_size``.

    Call :func:`set_loader_epoch` before each epoch. Workers (``num_workers > 0``) persist
    across epochs; ``generator`` seeds them (:func:`seed_worker`).
    """
    sampler = DistributedSampler(
        dataset,
        num_replicas=context.world_size,
        rank=context.rank,
        shuffle=True,
        seed=seed,
        drop_last=True,
    )
    return DataLoader(
        _EpochIndexed(dataset),
        batch_size=context.local_batch(batch_size),
        sampler=_EpochSampler(sampler),
        drop_last=True,  # as INP-Former: every step sees a full batch
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Select the permutation (and the dataset's augmentation stream) of ``epoch``."""
    loader.sampler.sampler.set_epoch(epoch)


@contextmanager
def main_first(context: DistributedContext) -> Iterator[None]:
    """Run the block on rank 0, then on the other ranks: shared files are created once."""
    if not context.is_main:
        context.barrier()
    yield
    if context.is_main:
        context.barrier()
