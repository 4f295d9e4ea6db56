"""RunMaps: the one way ff-eval, ff-predict and ff-export predict and calibrate a run."""

from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from filterformer.runs.run_maps import RunMaps


@pytest.mark.parametrize(
    ("kind", "test_split"), [("mvtec_ad2", "test_public"), ("mvtec_ad", "test")]
)
def test_f1_optimal_reads_the_test_split_of_the_run_s_benchmark(monkeypatch, kind, test_split):
    run = SimpleNamespace(
        config=OmegaConf.create({"data": {"kind": kind}}),
        threshold_rule={"rule": "f1_optimal"},
        run_dir="RUN",
        category="c",
        model=None,
    )
    maps = RunMaps(run, device="cpu")
    asked: list[str] = []
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2] = True
    sample = SimpleNamespace(load_mask=lambda: mask)
    monkeypatch.setattr(maps, "samples", lambda split: asked.append(split) or [sample])
    monkeypatch.setattr(maps, "predict", lambda samples: [(s, mask * 1.0) for s in samples])
    threshold = maps.threshold()
    assert asked == [test_split]
    assert threshold.rule == "f1_optimal" and 0.0 < threshold.value <= 1.0
    assert threshold.source_split == test_split and threshold.is_oracle(test_split)
    assert threshold.describe(test_split) == f"f1_optimal({test_split}) ORACLE"
    assert not threshold.is_oracle("validation")
