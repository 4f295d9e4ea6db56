"""Our lighting-robust CPR: relit training pairs, photometric normalisation, where each is on,
and the warning of preset=cpr_demo on other data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from filterformer.data.pseudo_defects import PseudoDefects, PseudoDefectSettings
from filterformer.data.pseudo_split import relight
from filterformer.data.transforms import InputGeometry
from filterformer.errors import ConfigError
from filterformer.models.cpr.family import CPRFamily, demo_data_warning
from filterformer.models.cpr.model import unpack_pairs
from filterformer.models.cpr.pairs import PairNoise, PairRelight, RetrievalPairs
from filterformer.models.cpr.photometric import photometric_normalise
from filterformer.runs.checks import check_settings
from filterformer.runs.compose import compose_config

SIZE = (32, 40)


def compose_train(*overrides: str):
    return compose_config(overrides)


def plain(*overrides: str) -> dict:
    """The resolved config as plain values (what a family's training set reads)."""
    return OmegaConf.to_container(compose_train(*overrides), resolve=True)


def pairs(relit: PairRelight | None) -> RetrievalPairs:
    rng = np.random.default_rng(0)
    images = [rng.integers(40, 200, (*SIZE, 3), dtype=np.uint8) for _ in range(5)]
    neighbours = np.array([[1, 2], [0, 2], [3, 4], [2, 4], [3, 0]])
    return RetrievalPairs(
        images,
        neighbours,
        InputGeometry(SIZE),
        PseudoDefects(PseudoDefectSettings(anomaly_probability=1.0)),
        foreground=None,
        length=10,
        seed=4,
        noise=PairNoise(probability=0.0),
        relight=relit,
    )


def test_relit_pairs_change_the_light_of_each_image_on_its_own() -> None:
    plain, off, relit = pairs(None), pairs(PairRelight(0.0, 2.0)), pairs(PairRelight(1.0, 2.0))
    ratios = []
    for index in range(10):
        assert torch.equal(plain[index], off[index])  # off: CPR's items, draw for draw
        image, reference, mask, _ = unpack_pairs(plain[index][None])
        image2, reference2, mask2, _ = unpack_pairs(relit[index][None])
        assert torch.equal(mask, mask2)  # light is not a defect
        assert not torch.equal(reference, reference2)
        ratios.append(
            float((image2.mean() - image.mean()) - (reference2.mean() - reference.mean()))
        )
    assert np.std(ratios) > 0.05  # query and reference get different changes


def test_relight_strength_scales_the_mixed_splits_engine() -> None:
    image = np.random.default_rng(1).integers(60, 190, (24, 30, 3), dtype=np.uint8)

    def change(strength: float) -> float:
        rng = np.random.default_rng(5)
        return float(np.abs(relight(image, rng, strength).astype(float) - image).mean())

    assert change(0.0) == 0.0
    assert 0 < change(1.0) < change(2.0)


def intensity_to_input(intensity: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (intensity - mean) / std


def test_photometric_normalisation_undoes_exposure_colour_cast_and_ramps() -> None:
    generator = torch.Generator().manual_seed(0)
    scene = 0.2 + 0.5 * torch.rand(2, 3, 48, 64, generator=generator)
    gains = torch.tensor([0.5, 0.7, 0.4])[:, None, None]  # under-exposed with a colour cast
    ramp = torch.linspace(0.6, 1.4, 64)[None, None, None]  # a directional light
    base = intensity_to_input(scene)
    exposed = intensity_to_input(scene * gains)
    lit = intensity_to_input(scene * ramp)

    def gap(mode: str, other: torch.Tensor) -> float:
        return float(
            (photometric_normalise(other, mode) - photometric_normalise(base, mode)).abs().mean()
        )

    assert gap("none", exposed) > 0.5 and gap("none", lit) > 0.3
    assert gap("standardise", exposed) < 1e-4  # a per-channel gain is undone exactly
    assert gap("local", exposed) < 0.02  # ... up to the 1/255 floor of the intensities
    assert gap("local", lit) < 0.25 * gap("standardise", lit)  # the ramp mostly too
    assert torch.equal(photometric_normalise(base, "none"), base)
    with pytest.raises(ValueError, match="photometric"):
        photometric_normalise(base, "retinex")


@pytest.mark.parametrize("preset", ["cpr_paper", "cpr_dinov2"])
def test_the_faithful_presets_keep_cprs_own_light(preset: str) -> None:
    cfg = compose_train(f"preset={preset}")
    assert cfg.model.photometric == "none" and cfg.cpr.relight.probability == 0


@pytest.mark.parametrize("preset", ["cpr_demo", "cpr_lighting"])
def test_the_lighting_options_are_on_in_ours(preset: str) -> None:
    cfg = compose_train(f"preset={preset}")
    assert cfg.model.photometric != "none" or cfg.cpr.relight.probability > 0
    assert cfg.eval.image_score.startswith("sum_top") and cfg.model.foreground_max_at == "input"


def test_cpr_demo_on_other_data_says_what_it_keeps() -> None:
    assert demo_data_warning(plain("preset=cpr_demo")) is None
    message = demo_data_warning(plain("preset=cpr_demo", "data=mvtec_ad2", "data.root=/data"))
    assert message is not None
    for part in ("data=mvtec_ad2", "category=synthetic", "foreground off", "60 steps", "top_k=4"):
        assert part in message
    assert demo_data_warning(plain("preset=cpr_paper", "data=mvtec_ad2", "data.root=/d")) is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model.photometric", "retinex"),
        ("model.photometric_sigma", 0),
        ("cpr.relight.probability", 1.5),
        ("cpr.relight.strength", -1),
        ("model.loss_sampling", "edges"),
        ("model.foreground_max_at", "tile"),
        ("cpr.weight_border", "wrap"),
    ],
)
def test_bad_lighting_and_official_options_are_named(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        check_settings({key: value}, family_ranges=CPRFamily.setting_ranges)
