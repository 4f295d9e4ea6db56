"""Threshold rules (mean + k std, quantile, F1-optimal oracle) and thresholds.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from filterformer.errors import ConfigError, DataError
from filterformer.evaluation.aupro import ProAccumulator
from filterformer.evaluation.thresholds import (
    MapMoments,
    Threshold,
    f1_optimal_threshold,
    mean_std_threshold,
    quantile_threshold,
    read_thresholds,
    threshold_by_rule,
    write_thresholds,
)

AD2 = {"labelled_split": "test_public"}
"""MVTec AD 2's labelled test split, where f1_optimal calibrates."""


def validation_maps() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.normal(size=(30, 40)) * s + 1e3).astype(np.float32) for s in (0.5, 1, 2)]


def test_streaming_mean_std_equals_numpy_over_all_pixels() -> None:
    maps = validation_maps()
    pixels = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    moments = MapMoments()
    for m in maps:
        moments.update(m)
    assert moments.mean == pytest.approx(pixels.mean(), rel=1e-14)
    assert moments.std == pytest.approx(pixels.std(), rel=1e-12)  # large offset: no cancellation
    threshold = mean_std_threshold(maps, k=3)
    assert threshold.value == pytest.approx(pixels.mean() + 3 * pixels.std(), rel=1e-14)
    assert threshold.to_json() == {
        "value": threshold.value,
        "rule": "mean_std",
        "k": 3,
        "source_split": "validation",
    }


def test_quantile_is_the_inverted_cdf_of_float16_scores() -> None:
    maps = [m - 1e3 for m in validation_maps()]
    pixels = np.concatenate([m.ravel() for m in maps]).astype(np.float16).astype(np.float64)
    for q in (0.5, 0.99, 1.0):
        threshold = quantile_threshold(maps, q)
        assert threshold.value == np.quantile(pixels, q, method="inverted_cdf")
        assert np.mean(pixels > threshold.value) <= 1 - q + 1e-12


@pytest.mark.parametrize(
    ("labelled", "other"), [("test_public", "test_private"), ("test", "validation")]
)
def test_f1_optimal_threshold_is_an_oracle_on_the_split_whose_labels_chose_it(
    labelled: str, other: str
) -> None:
    """MVTec AD 2 calibrates on test_public, MVTec AD and VisA on test: the label says which."""
    acc = ProAccumulator()
    gt = np.zeros((6, 6), bool)
    gt[:3] = True
    acc.update(np.where(gt, 2.0, 1.0).astype(np.float32), gt)
    threshold = f1_optimal_threshold(acc.pixel_counts(), labelled)
    assert 1.0 < threshold.value < 2.0 and threshold.source_split == labelled
    assert threshold.is_oracle(labelled) and not threshold.is_oracle(other)
    assert threshold.describe(labelled) == f"f1_optimal({labelled}) ORACLE"
    assert threshold.describe(other) == f"f1_optimal({labelled})"
    assert Threshold(1.5, "f1_optimal").is_oracle(other)  # origin unknown: assume the worst
    assert mean_std_threshold([gt.astype(float)]).describe("test_public") == (
        "mean+3std(validation)"
    )


def test_no_validation_maps_is_an_error_naming_the_folder() -> None:
    with pytest.raises(DataError, match="maps/can/validation"):
        mean_std_threshold([], source="maps/can/validation")
    with pytest.raises(DataError, match="maps/can/validation"):
        quantile_threshold(iter([]), 0.99, source="maps/can/validation")


def test_round_trip_and_the_plain_golden_form(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.json"
    saved = {
        "can": Threshold(1.5, "mean_std", {"k": 3.0}, "validation"),
        "rice": Threshold(0.25, "quantile", {"q": 0.99}, "validation"),
    }
    write_thresholds(path, saved)
    assert read_thresholds(path) == saved
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"fakecat": 1.232258655579377}))
    assert read_thresholds(plain) == {"fakecat": Threshold(1.232258655579377, "given")}


def test_per_mode_form_of_the_run_folder(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.json"
    write_thresholds(path, {"can": Threshold(1.0, "mean_std", {"k": 3.0}, "validation")}, "inp")
    write_thresholds(path, {"can": Threshold(2.0, "mean_std", {"k": 3.0}, "validation")}, "max")
    assert set(json.loads(path.read_text())["can"]) == {"inp", "max"}
    assert read_thresholds(path, mode="max")["can"].value == 2.0
    assert read_thresholds(path, mode="filter") == {}  # not calibrated yet: the caller does it
    with pytest.raises(ConfigError, match=r"several fusion modes \['inp', 'max'\]"):
        read_thresholds(path)  # which of the two is ambiguous


def test_a_record_without_a_rule_is_a_given_threshold(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"can": {"value": 0.5}, "rice": {"value": 1, "rule": "given"}}))
    assert read_thresholds(path) == {"can": Threshold(0.5, "given"), "rice": Threshold(1.0)}


@pytest.mark.parametrize(
    "content", ['{"can": "high"}', '{"can": {"value": 1, "rule": "magic"}}', "[1, 2]", "{not json"]
)
def test_malformed_thresholds_files_are_refused_naming_the_file(tmp_path: Path, content) -> None:
    path = tmp_path / "bad_thresholds.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="bad_thresholds.json"):
        read_thresholds(path)


def test_missing_thresholds_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.json"):
        read_thresholds(tmp_path / "nope.json")


def test_threshold_by_rule_follows_the_category_config() -> None:
    maps = [np.linspace(0.0, 1.0, 100, dtype=np.float32).reshape(10, 10)]
    gt = np.zeros((10, 10), dtype=bool)
    gt[9] = True  # the ten highest scores are the anomalous pixels

    def validation():
        return iter(maps)

    def labelled():
        return iter([(maps[0], gt)])

    by_k = threshold_by_rule({"rule": "mean_std", "k": 2}, validation, labelled, "cat", **AD2)
    assert by_k.rule == "mean_std" and by_k.params == {"k": 2.0}
    assert by_k.value == pytest.approx(maps[0].mean() + 2 * maps[0].std(), rel=1e-6)
    by_q = threshold_by_rule({"rule": "quantile", "q": 0.5}, validation, labelled, "cat", **AD2)
    assert by_q.rule == "quantile" and by_q.value == pytest.approx(0.4949, abs=2e-3)
    best = threshold_by_rule(
        {"rule": "f1_optimal"}, validation, labelled, "cat", labelled_split="test"
    )
    assert best.source_split == "test" and best.describe("test") == "f1_optimal(test) ORACLE"
    assert ((maps[0] > best.value) == gt).all()  # F1 = 1 separates exactly the GT row


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"rule": "median"}, "unknown threshold rule"),
        ({"rule": "quantile"}, "needs q"),
        ({"rule": "fixed"}, "needs level"),
        ({"rule": "fixed", "level": 9, "scale": 0}, "scale > 0"),
        ({"rule": "f1_pseudo"}, "validation_pseudo"),
        (
            {"rule": "fixed", "level": 1, "splits": {"test_private_mixed": {"rule": "x"}}},
            "split te",
        ),
    ],
)
def test_threshold_by_rule_refuses_bad_rules(rule: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        threshold_by_rule(rule, lambda: iter([]), lambda: iter([]), "cat", **AD2)


def test_fixed_rule_reads_a_level_on_its_stated_scale() -> None:
    """The ISVL hybrid's 79 of 255 on maps clipped to [0, 1] is 79 / 255 on our map."""
    fixed = threshold_by_rule(
        {"rule": "fixed", "level": 79, "scale": 255}, iter, iter, "can", **AD2
    )
    assert fixed.value == pytest.approx(79 / 255) and fixed.source_split is None
    assert fixed.describe("test_private") == "fixed79/255"


def test_f1_pseudo_is_the_best_f1_on_pseudo_defects_and_label_free() -> None:
    amap = np.linspace(0.0, 1.0, 100, dtype=np.float32).reshape(10, 10)
    mask = np.zeros((10, 10), bool)
    mask[8:] = True  # the twenty highest scores

    def no_labels():
        raise AssertionError("f1_pseudo must not read test labels")

    best = threshold_by_rule(
        {"rule": "f1_pseudo"}, iter, no_labels, "cat", lambda mixed: iter([(amap, mask)]), **AD2
    )
    assert best.source_split == "validation_pseudo" and not best.is_oracle("test_public")
    assert ((amap > best.value) == mask).all()


def test_each_split_gets_its_own_threshold_and_the_file_keeps_them(tmp_path: Path) -> None:
    maps = [np.linspace(0.0, 1.0, 100, dtype=np.float32).reshape(10, 10)]
    rule = {
        "rule": "mean_std",
        "k": 3,
        "splits": {"test_private_mixed": {"rule": "fixed", "level": 96, "scale": 255}},
    }
    threshold = threshold_by_rule(rule, lambda: iter(maps), iter, "walnuts", **AD2)
    mixed = threshold.for_split("test_private_mixed")
    assert mixed.rule == "fixed" and mixed.value == pytest.approx(96 / 255)
    assert threshold.for_split("test_private").rule == "mean_std"
    assert threshold.for_split("test_private").value == threshold.value
    write_thresholds(tmp_path / "t.json", {"walnuts": threshold}, "filter")
    back = read_thresholds(tmp_path / "t.json", "filter")["walnuts"]
    assert back == threshold
    assert back.for_split("test_private_mixed").value == pytest.approx(96 / 255)


def test_published_levels_record_that_their_authors_chose_them_on_test_labels(tmp_path) -> None:
    """suite=isvl: the ISVL hybrid's levels of its 8-bit maps, test_private / _mixed."""
    rule = {
        "rule": "fixed",
        "level": 79,
        "chosen_on": "authors_test_labels",
        "splits": {
            "test_private_mixed": {"rule": "fixed", "level": 96, "chosen_on": "authors_test_labels"}
        },
    }
    threshold = threshold_by_rule(rule, list, list, "can", labelled_split="test_public")
    assert (threshold.value, threshold.for_split("test_private_mixed").value) == (79, 96)
    assert threshold.source_split == "authors_test_labels"
    assert threshold.describe("test_public") == "fixed79(chosen by its authors on test labels)"
    write_thresholds(tmp_path / "t.json", {"can": threshold})
    again = read_thresholds(tmp_path / "t.json")["can"]
    assert again.for_split("test_private_mixed").source_split == "authors_test_labels"
