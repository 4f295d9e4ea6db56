"""Label-free selection: the validation_pseudo split, and no test mask read by default."""

import json
import sys

import numpy as np
import pytest
import torch

from filterformer.cli.eval import main as eval_main
from filterformer.cli.predict import main as predict_main
from filterformer.cli.train import main as train_main
from filterformer.data.datasets import read_split
from filterformer.data.pseudo_split import pseudo_validation
from filterformer.data.sample import Sample
from filterformer.data.synthetic import make_synthetic_category
from filterformer.evaluation.thresholds import read_thresholds
from filterformer.runs.files import sign_run

TINY = [
    "preset=demo",
    "data.image_size=[56,70]",
    "input.resize=[56,70]",
    "train.epochs=1",
    "eval.every=1",
    "progress=false",
    "data.counts={train: 4, validation: 3, test_public_good: 1, test_public_bad: 1, "
    "test_private: 1, test_private_mixed: 1}",
]


def _validation(tmp_path) -> list[Sample]:
    root = tmp_path / "data"
    make_synthetic_category(root, image_size=(48, 64), counts={"train": 1, "validation": 3})
    return list(read_split("synthetic", root, "synthetic", "validation"))


def test_pseudo_split_is_exact_deterministic_and_cached(tmp_path):
    validation = _validation(tmp_path)
    first = pseudo_validation(validation, tmp_path / "a", seed=3)
    assert [s.split for s in first] == ["validation_pseudo"] * 3
    assert all(s.label == 1 for s in first)
    for source, pseudo in zip(validation, first, strict=True):
        changed = (pseudo.load_image() != source.load_image()).any(axis=2)
        np.testing.assert_array_equal(pseudo.load_mask(), changed)  # the mask is exact
    again = pseudo_validation(validation, tmp_path / "b", seed=3)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.load_image(), b.load_image())
    stamp = first[0].path.stat().st_mtime_ns
    masks = [s.load_mask() for s in first]
    pseudo_validation(validation, tmp_path / "a", seed=3)  # cached: not rewritten
    assert first[0].path.stat().st_mtime_ns == stamp
    other = pseudo_validation(validation, tmp_path / "a", seed=4)  # other settings: rewritten
    assert not all(np.array_equal(m, s.load_mask()) for m, s in zip(masks, other, strict=True))


def test_mixed_pseudo_split_relights_the_same_defects(tmp_path):
    validation = _validation(tmp_path)
    regular = pseudo_validation(validation, tmp_path / "p", seed=3)
    mixed = pseudo_validation(validation, tmp_path / "p", seed=3, mixed=True)
    assert [s.split for s in mixed] == ["validation_pseudo_mixed"] * 3
    for a, b in zip(regular, mixed, strict=True):
        np.testing.assert_array_equal(a.load_mask(), b.load_mask())  # the same defects
        assert not np.array_equal(a.load_image(), b.load_image())  # under other lighting


@pytest.mark.slow
def test_default_training_and_calibration_read_no_test_mask(monkeypatch, tmp_path):
    """ff-train (selection every epoch) and ff-predict's threshold calibration, both by
    f1_pseudo and by the default mean + 3 std, under the default eval.split."""
    load_mask = Sample.load_mask

    def guarded(sample: Sample):
        if sample.split.startswith("test"):
            raise AssertionError(f"read the test mask of {sample.path}")
        return load_mask(sample)

    monkeypatch.setattr(Sample, "load_mask", guarded)
    threads = torch.get_num_threads()
    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["ff-train", *TINY, f"run_dir={run}"])
    train_main()
    torch.set_num_threads(threads)
    assert (run / "validation_pseudo" / "regular" / "settings.json").is_file()
    assert any(run.glob("checkpoints/best_*"))  # selection ran, on validation_pseudo
    for rule in ("mean_std", "f1_pseudo"):
        (run / "thresholds.json").unlink(missing_ok=True)
        config = (run / "config.yaml").read_text()
        config = config.replace("rule: mean_std", f"rule: {rule}")
        if rule == "f1_pseudo":  # and the mixed split's own, on relit pseudo-defects
            config = config.replace(
                "  threshold:\n",
                "  threshold:\n    splits: {test_private_mixed: {rule: f1_pseudo}}\n",
                1,
            )
        (run / "config.yaml").write_text(config)
        sign_run(run)  # as if trained with this rule
        out = tmp_path / f"out_{rule}"
        argv = ["--run", str(run), "--out", str(out), "--no-progress"]
        assert eval_main(["--calibrate", "--run", str(run), "--no-progress"]) == 0
        assert predict_main([*argv, "--split", "test_private"]) == 0
        mode = json.loads((run / "fusion.json").read_text())["synthetic"]
        [threshold] = read_thresholds(run / "thresholds.json", mode).values()
        assert threshold.rule == rule and not threshold.is_oracle("test_public")
    mixed = threshold.for_split("test_private_mixed")
    assert mixed.rule == "f1_pseudo" and mixed.source_split == "validation_pseudo_mixed"
