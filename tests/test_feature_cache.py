"""Frozen-encoder feature cache: same training as without it, disk round trip, never stale."""

import csv
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import settings_for_tests
from filterformer.cli.train import main
from filterformer.data.mvtec_ad2 import MVTecAD2
from filterformer.data.training_set import TrainingImages
from filterformer.data.transforms import InputGeometry, TrainAugment
from filterformer.errors import ConfigError
from filterformer.models import build_encoder, build_model
from filterformer.training.checkpoint import has_checkpoint
from filterformer.training.feature_cache import FeatureCacheSettings, cache_features
from filterformer.training.loop import train

GEOMETRY = InputGeometry((56, 70))  # 4 x 5 tokens
IDENTITY = {"model": "filterformer", "encoder": "tiny_random", "encoder_weights": "random:seed=0"}
AUGMENT = TrainAugment(color_jitter={"brightness": 0.3}, hflip=0.5)


def tiny_model():
    torch.manual_seed(0)
    encoder = build_encoder("tiny_random", pretrained=False)
    return build_model("filterformer", encoder, decoder_depth=8, diff_depth=1)


def images(root, augment=None, geometry=GEOMETRY):
    return TrainingImages(MVTecAD2(root, "synthetic", "train"), geometry, augment, seed=3)


def train_losses(train_set, model, run_dir):
    train(
        model,
        train_set,
        run_dir=run_dir,
        checkpoint_meta=IDENTITY,
        settings=settings_for_tests(
            epochs=2,
            batch_size=4,
            optimizer={"lr": 1e-3, "final_lr": 1e-4, "warmup_iters": 2},
            seed=5,
        ),
    )
    with open(run_dir / "train_log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return np.array([[float(r[k]) for k in ("loss", "sm", "coherence", "df")] for r in rows])


def cached(root, dtype, **kwargs):
    settings = FeatureCacheSettings(dtype=dtype, **kwargs)
    model = tiny_model()
    return cache_features(model.encoder, images(root), settings, progress=False), model


@pytest.mark.slow
def test_float32_cache_trains_exactly_like_the_encoder_and_bfloat16_closely(
    synthetic_root, tmp_path
):
    reference = train_losses(images(synthetic_root), tiny_model(), tmp_path / "plain")
    taps, model = cached(synthetic_root, "float32")
    assert (taps.grid, len(taps), taps[0].shape) == ((4, 5), 8, (8, 20, 64))
    np.testing.assert_allclose(train_losses(taps, model, tmp_path / "fp32"), reference, rtol=1e-5)
    taps, model = cached(synthetic_root, "bfloat16")
    assert taps[0].dtype == torch.bfloat16
    np.testing.assert_allclose(train_losses(taps, model, tmp_path / "bf16"), reference, rtol=1e-2)


def test_disk_cache_round_trip_reuses_every_file(synthetic_root, tmp_path):
    memory, _ = cached(synthetic_root, "float32")
    first, _ = cached(synthetic_root, "float32", storage="disk", dir=tmp_path)
    again, _ = cached(synthetic_root, "float32", storage="disk", dir=tmp_path)
    assert (first.computed, again.computed) == (8, 0)
    assert len(list(tmp_path.glob("*.safetensors"))) == 8
    for index in range(8):
        assert torch.equal(again[index], memory[index])


def test_disk_cache_recomputes_what_changed(synthetic_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("copy")
    cache_dir = root / "cache"
    for sample in MVTecAD2(synthetic_root, "synthetic", "train"):
        target = root / "synthetic" / sample.path.relative_to(synthetic_root / "synthetic")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(sample.path.read_bytes())
    settings = FeatureCacheSettings(storage="disk", dir=cache_dir)
    encoder = tiny_model().encoder

    def computed(dataset, enc=encoder):
        return cache_features(enc, dataset, settings, progress=False).computed

    assert computed(images(root)) == 8
    assert computed(images(root)) == 0
    # One image's content changes: only that image is encoded again.
    changed = MVTecAD2(root, "synthetic", "train")[2].path
    cv2.imwrite(str(changed), 255 - cv2.imread(str(changed)))
    assert computed(images(root)) == 1
    # Other encoder weights, or another input geometry: nothing is reused.
    other = tiny_model().encoder
    with torch.no_grad():
        other.vit.blocks[0].mlp.fc1.bias.add_(1e-3)
    assert computed(images(root), other) == 8
    assert computed(images(root, geometry=InputGeometry((70, 70)))) == 8


def test_augmented_views_are_the_epochs_of_the_image_stream(synthetic_root):
    model = tiny_model()
    settings = FeatureCacheSettings(views=3, dtype="float32")
    taps = cache_features(model.encoder, images(synthetic_root, AUGMENT), settings, progress=False)
    again = cache_features(model.encoder, images(synthetic_root, AUGMENT), settings, progress=False)
    stream = images(synthetic_root, AUGMENT)
    for epoch in (0, 1, 2, 4):  # epoch 4 trains on view 1
        taps.set_epoch(epoch)
        again.set_epoch(epoch)
        stream.set_epoch(epoch % 3)
        for index in (0, 5):
            expected = torch.stack(model.encoder(stream[index][None]), dim=1)[0]
            torch.testing.assert_close(taps[index], expected, rtol=1e-5, atol=1e-5)
            assert torch.equal(taps[index], again[index])
    taps.set_epoch(0)
    view0 = taps[0]
    taps.set_epoch(1)
    assert not torch.equal(view0, taps[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"storage": "ram"}, "storage='ram'"),
        ({"storage": "disk"}, "needs train.feature_cache.dir"),
        ({"dtype": "float16"}, "dtype='float16'"),
        ({"views": 0}, "views=0"),
    ],
)
def test_bad_settings_name_the_config_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FeatureCacheSettings(**kwargs)


def test_views_need_an_augmented_dataset(synthetic_root):
    plain = [t for t in images(synthetic_root)]  # a Dataset-like list without set_epoch
    with pytest.raises(ConfigError, match="views=2"):
        cache_features(tiny_model().encoder, plain, FeatureCacheSettings(views=2), progress=False)


@pytest.mark.slow
def test_ff_train_caches_only_what_stays_the_same_every_epoch(
    monkeypatch, capsys, tmp_path, tiny_demo_overrides
):
    tiny = [
        "ff-train",
        *tiny_demo_overrides,
        "train.feature_cache.enabled=true",
        "train.feature_cache.storage=disk",
    ]
    monkeypatch.setattr(sys, "argv", [*tiny, f"run_dir={tmp_path / 'augmented'}"])
    main()
    assert "feature cache off: the training items change every epoch" in capsys.readouterr().err
    assert not (tmp_path / "augmented" / "feature_cache").exists()
    monkeypatch.setattr(sys, "argv", [*tiny, "train.augment=null", f"run_dir={tmp_path / 'plain'}"])
    main()
    assert len(list((tmp_path / "plain" / "feature_cache").glob("*.safetensors"))) == 4
    assert has_checkpoint(tmp_path / "plain" / "checkpoints" / "last")
