"""Input geometry (resize, fit, centre crop, way back to the original size) and augmentation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance
from torchvision import transforms as tv
from torchvision.transforms import v2

from filterformer.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputGeometry,
    TrainAugment,
    isvl_lighting,
    pil_brightness,
    short_side_size,
)
from filterformer.errors import ConfigError


def _random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("resize", "crop"), [((40, 50), (27, 33)), ((64, 96), (56, 56)), ((9, 9), (4, 4))]
)
def test_crop_box_matches_torchvision_center_crop(resize, crop):
    geometry = InputGeometry(resize, crop)
    array = np.arange(resize[0] * resize[1]).reshape(resize)
    expected = v2.CenterCrop(crop)(torch.from_numpy(array)[None])[0].numpy()
    np.testing.assert_array_equal(geometry.center_crop(array), expected)


def test_to_tensor_shape_and_normalisation():
    geometry = InputGeometry((28, 42), (14, 28))
    assert geometry.input_size == (14, 28)
    white = np.full((100, 150, 3), 255, dtype=np.uint8)
    tensor = geometry.to_tensor(white)
    assert tensor.shape == (3, 14, 28) and tensor.dtype == torch.float32
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(tensor[:, 0, 0], expected)
    assert InputGeometry((28, 42)).input_size == (28, 42)


def test_resize_is_exact_for_integer_factors():
    image = _random_image(8, 12)
    geometry = InputGeometry((4, 6))
    block_means = image.reshape(4, 2, 6, 2, 3).astype(float).mean(axis=(1, 3))  # INTER_AREA
    np.testing.assert_allclose(geometry.resize(image), block_means, atol=0.5 + 1e-9)
    assert geometry.resize(_random_image(2, 3)).shape == (4, 6, 3)  # enlarging works too


@pytest.mark.parametrize("original", [(61, 47), (13, 17)])  # shrink and enlarge
def test_pil_bilinear_is_the_official_inp_former_pipeline_exactly(original):
    # INP-Former code (get_data_transforms in dataset.py): Resize(448) on a PIL image, ToTensor,
    # CenterCrop(392), Normalize
    image = _random_image(*original, seed=3)
    official = tv.Compose(
        [
            tv.Resize((28, 35)),
            tv.ToTensor(),
            tv.CenterCrop((20, 24)),
            tv.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    geometry = InputGeometry((28, 35), (20, 24), interpolation="pil_bilinear")
    expected = official(Image.fromarray(image))
    torch.testing.assert_close(geometry.to_tensor(image), expected, rtol=0, atol=0)
    pil = Image.fromarray(image).resize((35, 28), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(geometry.resize(image), np.asarray(pil))


def test_interpolation_choices():
    image = _random_image(40, 60)
    area = InputGeometry((10, 15)).resize(image)
    bilinear = InputGeometry((10, 15), interpolation="bilinear").resize(image)
    np.testing.assert_array_equal(area, cv2.resize(image, (15, 10), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(
        bilinear, cv2.resize(image, (15, 10), interpolation=cv2.INTER_LINEAR)
    )
    assert not np.array_equal(area, bilinear)  # area is anti-aliased, bilinear is not
    with pytest.raises(ConfigError, match="input.interpolation 'bicubic' is unknown"):
        InputGeometry((10, 15), interpolation="bicubic")


@pytest.mark.parametrize("crop", [None, (16, 20)])
def test_block_map_lands_on_the_right_original_pixels(crop):
    # original 60 x 96 -> resize 30 x 48 (factor 2) -> optional crop 16 x 20 at (7, 14)
    geometry = InputGeometry((30, 48), crop)
    top, left, height, width = geometry.crop_box
    amap = np.zeros(geometry.input_size, dtype=np.float32)
    amap[3:9, 5:12] = 1.0
    restored = geometry.to_original(torch.from_numpy(amap), (60, 96))
    assert restored.shape == (60, 96) and restored.dtype == np.float32
    expected = np.zeros((60, 96), dtype=bool)
    expected[2 * (top + 3) : 2 * (top + 9), 2 * (left + 5) : 2 * (left + 12)] = True
    np.testing.assert_array_equal(restored > 0.5, expected)
    assert restored.min() == 0.0 and restored.max() == 1.0


def test_area_outside_the_crop_is_not_scored_and_not_stretched():
    geometry = InputGeometry((30, 48), (16, 20))
    assert geometry.crop_box == (7, 14, 16, 20)
    amap = np.linspace(2.0, 5.0, 16 * 20, dtype=np.float32).reshape(16, 20)
    restored = geometry.to_original(amap, (60, 96))
    assert np.all(restored[:, : 2 * 14 - 1] == 2.0) and np.all(restored[:, 2 * 34 + 1 :] == 2.0)
    assert np.all(restored[: 2 * 7 - 1] == 2.0) and np.all(restored[2 * 23 + 1 :] == 2.0)
    # the 2 x 2 original block of crop pixel (8, 10) averages to it (the map is linear)
    np.testing.assert_allclose(restored[30:32, 48:50].mean(), amap[8, 10], rtol=1e-5)


def test_mask_to_input_resolution_and_back():
    geometry = InputGeometry((30, 48), (16, 20))
    mask = np.zeros((60, 96), dtype=bool)
    mask[30:40, 40:50] = True
    small = geometry.from_original_mask(mask)
    assert small.shape == (16, 20) and small.dtype == bool
    np.testing.assert_array_equal(
        geometry.to_original(small.astype(np.float32), (60, 96)) > 0.5, mask
    )


def test_bad_geometry_arguments():
    with pytest.raises(ConfigError, match="crop"):
        InputGeometry((30, 40), (32, 32))
    with pytest.raises(ConfigError, match="resize"):
        InputGeometry((30,))
    with pytest.raises(ValueError, match="input size"):
        InputGeometry((30, 40)).to_original(np.zeros((40, 30)), (60, 80))


AUGMENTS = {
    "random_resized_crop": TrainAugment(random_resized_crop={"scale": (0.3, 1.0)}),
    "rotation": TrainAugment(rotation=30.0),
    "hflip": TrainAugment(hflip=1.0),
    "vflip": TrainAugment(vflip=1.0),
    "all": TrainAugment(
        random_resized_crop={"scale": (0.5, 1.0)},
        color_jitter={"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05},
        rotation=20.0,
        hflip=0.5,
        vflip=0.5,
        directional_light={"strength": 0.5, "p": 1.0},
    ),
}


@pytest.mark.parametrize("name", list(AUGMENTS))
def test_augmentation_keeps_image_and_mask_aligned(name):
    image = np.full((64, 80, 3), 40, dtype=np.uint8)
    mask = np.zeros((64, 80), dtype=bool)
    image[20:36, 24:48] = 230
    mask[20:36, 24:48] = True
    for seed in range(5):
        out, out_mask = AUGMENTS[name](image, mask, rng=seed)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert out_mask.shape == mask.shape and out_mask.dtype == bool
        bright = out.mean(axis=2) > 135
        overlap = (bright & out_mask).sum() / max((bright | out_mask).sum(), 1)
        assert out_mask.any() and overlap > 0.85, (name, seed, overlap)


def test_flip_is_exact():
    image, mask = _random_image(6, 8), np.eye(6, 8, dtype=bool)
    out, out_mask = TrainAugment(hflip=1.0)(image, mask, rng=0)
    np.testing.assert_array_equal(out, image[:, ::-1])
    np.testing.assert_array_equal(out_mask, mask[:, ::-1])


def test_photometric_ops_never_touch_the_mask():
    augment = TrainAugment(
        color_jitter={"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
        directional_light={"strength": 0.6, "p": 1.0},
    )
    image, mask = _random_image(32, 40), np.eye(32, 40, dtype=bool)
    out, out_mask = augment(image, mask, rng=1)
    assert out_mask is mask and not np.array_equal(out, image)


def test_directional_light_is_a_smooth_ramp():
    grey = np.full((40, 60, 3), 128, dtype=np.uint8)
    out, _ = TrainAugment(directional_light={"strength": 0.5, "p": 1.0})(grey, rng=4)
    assert out.min() < 128 < out.max()
    assert np.abs(np.diff(out[:, :, 0].astype(int), axis=0)).max() <= 3
    assert np.abs(np.diff(out[:, :, 0].astype(int), axis=1)).max() <= 3


def test_augmentation_is_deterministic_per_seed_and_off_when_none():
    image = _random_image(32, 40)
    augment = AUGMENTS["all"]
    np.testing.assert_array_equal(augment(image, rng=7)[0], augment(image, rng=7)[0])
    assert not np.array_equal(augment(image, rng=7)[0], augment(image, rng=8)[0])
    out, out_mask = TrainAugment()(image, rng=0)
    assert out is image and out_mask is None


def test_unknown_augmentation_option():
    with pytest.raises(ConfigError, match="brightnes"):
        TrainAugment(color_jitter={"brightnes": 0.2})


ORIGINALS = [(60, 96), (96, 60), (50, 50), (45, 100)]  # wide, tall, square, very wide


@pytest.mark.parametrize("fit", ["pad", "short_side"])
@pytest.mark.parametrize("original", ORIGINALS)
def test_letterbox_keeps_the_aspect_ratio_and_pads_with_the_mean(fit, original):
    geometry = InputGeometry((28, 42), fit=fit)
    top, left, height, width = geometry.image_box(*original)
    assert (height == 28 or width == 42) and height <= 28 and width <= 42  # fits, touching
    assert abs(width / height - original[1] / original[0]) < 1.5 / min(height, width)
    assert (top, left) == ((28 - height) // 2, (42 - width) // 2)  # centred
    tensor = geometry.to_tensor(_random_image(*original))
    assert tensor.shape == (3, 28, 42)  # one input shape for every aspect ratio
    inside = torch.zeros(28, 42, dtype=torch.bool)
    inside[top : top + height, left : left + width] = True
    assert torch.all(tensor[:, ~inside] == 0)  # the normalisation mean, exactly
    assert torch.all(tensor[:, inside].abs().sum(dim=0) > 0)


@pytest.mark.parametrize("fit", ["squash", "pad"])
@pytest.mark.parametrize("original", ORIGINALS)
def test_map_of_the_image_area_returns_to_the_original_size_exactly(fit, original):
    geometry = InputGeometry((28, 42), fit=fit)
    top, left, height, width = geometry.image_box(*original)
    amap = np.full((28, 42), 100.0, dtype=np.float32)  # letterbox bands: never seen again
    amap[top : top + height, left : left + width] = 1.0
    restored = geometry.to_original(amap, original)
    assert restored.shape == original and restored.dtype == np.float32
    np.testing.assert_array_equal(restored, np.ones(original, dtype=np.float32))


@pytest.mark.parametrize("fit", ["squash", "pad"])
@pytest.mark.parametrize("original", [(60, 96), (96, 60), (45, 100)])
def test_a_gradient_image_maps_back_to_itself(fit, original):
    """Network input -> map -> original size lands every pixel where it came from."""
    height, width = original
    ys, xs = np.mgrid[0:height, 0:width]
    ramp = (40 + 150 * (ys / (height - 1) + xs / (width - 1)) / 2).astype(np.uint8)
    geometry = InputGeometry((28, 42), fit=fit, interpolation="bilinear")
    tensor = geometry.to_tensor(np.repeat(ramp[:, :, None], 3, axis=2))
    amap = (tensor[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255  # channel 0, un-normalised
    restored = geometry.to_original(amap, original)
    error = np.abs(restored - ramp)
    assert error.mean() < 1.0 and error.max() < 5.0  # grey levels; a shift or stretch: > 80


def test_mask_round_trip_with_letterbox():
    geometry = InputGeometry((28, 42), fit="pad")
    mask = np.zeros((96, 60), dtype=bool)  # tall image in a wide canvas
    mask[30:70, 10:40] = True
    small = geometry.from_original_mask(mask)
    _, left, _, width = geometry.image_box(96, 60)
    assert small.shape == (28, 42) and left > 0  # a tall image: bands left and right
    assert not small[:, :left].any() and not small[:, left + width :].any()
    back = geometry.to_original(small.astype(np.float32), (96, 60)) > 0.5
    assert (back != mask).mean() < 0.03  # only the mask's border pixels may move


@pytest.mark.parametrize(
    ("image", "short", "expected"),
    [
        ((1200, 1600), 168, (168, 224)),  # 4:3: exact
        ((1600, 1200), 168, (224, 168)),  # portrait keeps its orientation
        ((1080, 1920), 168, (168, 308)),  # 298.7 rounds up to 22 patches
        ((500, 500), 224, (224, 224)),
        ((48, 64), 28, (28, 42)),  # 37.3 rounds up to 3 patches
    ],
)
def test_short_side_size_reference_values(image, short, expected):
    assert short_side_size(short, image, 14) == expected


def test_short_side_size_is_a_patch_multiple_within_one_patch_of_the_ratio():
    rng = np.random.default_rng(0)
    for height, width in rng.integers(20, 3000, (200, 2)):
        canvas = short_side_size(224, (height, width), 14)
        assert min(canvas) == 224 and all(side % 14 == 0 for side in canvas)
        exact = max(height, width) * 224 / min(height, width)
        assert exact <= max(canvas) < exact + 14
        geometry = InputGeometry(canvas, fit="short_side")
        assert min(geometry.scaled_size(height, width)) == 224  # the short side, exactly


def test_fit_arguments_are_checked():
    with pytest.raises(ConfigError, match="input.fit 'stretch' is unknown"):
        InputGeometry((28, 28), fit="stretch")
    with pytest.raises(ConfigError, match="input.crop=null or input.fit=squash"):
        InputGeometry((28, 28), (14, 14), fit="pad")
    with pytest.raises(ConfigError, match="multiple of the patch size 14; e.g. 210"):
        short_side_size(220, (100, 200), 14)


ISVL_LIGHTING = {
    "p": 0.5,
    "brightness": (0.5, 1.2),
    "regions": 3,
    "region_size": (30, 70),
    "region_brightness": (0.5, 1.5),
    "halves": (1.5, 0.7),
}


@pytest.mark.parametrize("factor", [0.5, 0.7, 0.8301, 1.0, 1.2, 1.5, 0.123456789])
def test_pil_brightness_is_pil_s_image_enhance(factor):
    """The ISVL hybrid code changes brightness with PIL (ImageEnhance.Brightness, also behind
    torchvision's ColorJitter on PIL images)."""
    image = _random_image(31, 47, seed=3)
    expected = np.asarray(ImageEnhance.Brightness(Image.fromarray(image)).enhance(factor))
    np.testing.assert_array_equal(pil_brightness(image, factor), expected)


def test_isvl_lighting_makes_one_of_the_code_s_three_changes():
    """p 0.5; then, equally likely: the whole image x U(0.5, 1.2); three rectangles of sides
    30..70 px x U(0.5, 1.5); the left half (x < W // 2) x 1.5 and the right half x 0.7."""
    image = np.full((120, 141, 3), 100, np.uint8)
    kinds = {"none": 0, "whole": 0, "regions": 0, "halves": 0}
    for seed in range(300):
        out = isvl_lighting(image, ISVL_LIGHTING, np.random.default_rng(seed))
        levels = set(np.unique(out[..., 0]).tolist())
        if np.array_equal(out, image):
            kinds["none"] += 1
        elif len(levels) == 1:
            assert 50 <= levels.pop() <= 120
            kinds["whole"] += 1
        elif np.array_equal(out[:, :70], np.full((120, 70, 3), 150)) and (out[:, 70:] == 70).all():
            kinds["halves"] += 1
        else:
            changed = (out != image).any(axis=2)
            assert 30 * 30 <= changed.sum() <= 3 * 70 * 70
            rows, cols = np.nonzero(changed)
            assert max(np.ptp(rows), np.ptp(cols)) < 141
            kinds["regions"] += 1
    assert 120 <= kinds["none"] <= 180
    assert all(30 <= kinds[k] <= 70 for k in ("whole", "regions", "halves")), kinds


def test_isvl_lighting_comes_before_the_flips():
    """As in the code (lighting, then the flips): a flipped image can be bright on the right."""
    image = np.full((40, 40, 3), 100, np.uint8)
    augment = TrainAugment(lighting={**ISVL_LIGHTING, "p": 1.0}, hflip=0.5)
    bright_right = 0
    for seed in range(200):
        out, _ = augment(image, rng=seed)
        bright_right += bool((out[:, 20:] == 150).all() and (out[:, :20] == 70).all())
    assert 10 <= bright_right <= 60  # 1/3 halves x 1/2 flipped of 200: about 33


def test_isvl_lighting_keeps_rectangles_inside_small_images():
    out = isvl_lighting(
        np.full((20, 25, 3), 100, np.uint8), {**ISVL_LIGHTING, "p": 1.0}, np.random.default_rng(7)
    )
    assert out.shape == (20, 25, 3)
