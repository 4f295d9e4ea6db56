"""Data-parallel training (torchrun / DDP) gives the weights of one process with the same batch."""

import csv
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from conftest import settings_for_tests
from filterformer.data.mvtec_ad2 import MVTecAD2
from filterformer.data.training_set import TrainingImages
from filterformer.data.transforms import InputGeometry, TrainAugment
from filterformer.errors import ConfigError
from filterformer.models import build_encoder, build_model
from filterformer.training.checkpoint import load_checkpoint
from filterformer.training.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    close_distributed,
    init_distributed,
)
from filterformer.training.loop import train

IDENTITY = {"model": "filterformer", "encoder": "tiny_random", "encoder_weights": "random:seed=0"}


def tiny_model(gamma):
    torch.manual_seed(0)
    encoder = build_encoder("tiny_random", pretrained=False)
    return build_model("filterformer", encoder, decoder_depth=8, diff_depth=1, mining_gamma=gamma)


def run(root, run_dir, gamma, distributed=SINGLE_PROCESS):
    """Two epochs of global batch 4 on the 8 synthetic images, with augmentation."""
    samples = MVTecAD2(root, "synthetic", "train")
    augment = TrainAugment(color_jitter={"brightness": 0.3}, hflip=0.5)
    model = tiny_model(gamma)
    train(
        model,
        TrainingImages(samples, InputGeometry((56, 70)), augment, seed=3),
        run_dir=run_dir,
        checkpoint_meta=IDENTITY,
        settings=settings_for_tests(
            epochs=2,
            batch_size=4,
            optimizer={"lr": 1e-3, "final_lr": 1e-4, "warmup_iters": 2},
            seed=5,
        ),
        distributed=distributed,
    )
    return model


def _rank(rank, world, port, root, run_dir, gamma):
    """One torchrun-like process: the environment torchrun sets, then the training."""
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    context = init_distributed()
    try:
        run(root, run_dir, gamma, context)
    finally:
        close_distributed()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def trained_in_two_processes(root, run_dir, gamma):
    mp.spawn(_rank, args=(2, free_port(), root, run_dir, gamma), nprocs=2, join=True)
    model = tiny_model(gamma)
    load_checkpoint(run_dir / "checkpoints" / "last", model, expected=IDENTITY)
    return model


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one(synthetic_root, tmp_path):
    """The same global batches split over two gloo processes: same weights and loss log.

    With the recipe's soft mining (gamma 3), whose gradient weights divide by the mean
    distance of the whole batch: the processes all-reduce that mean.
    """
    single = run(synthetic_root, tmp_path / "single", gamma=3.0)
    double = trained_in_two_processes(synthetic_root, tmp_path / "ddp", gamma=3.0)
    for name, tensor in single.trainable_state_dict().items():
        torch.testing.assert_close(double.trainable_state_dict()[name], tensor, msg=name)
    single_log, double_log = (
        read_rows(tmp_path / run / "train_log.csv") for run in ("single", "ddp")
    )
    assert [r["step"] for r in double_log] == ["1", "2", "3", "4"]
    for a, b in zip(single_log, double_log, strict=True):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)


def test_batch_must_split_evenly_over_the_processes():
    with pytest.raises(ConfigError, match="batch_size=5 does not split evenly over 2"):
        DistributedContext(rank=0, world_size=2).local_batch(5)
