"""The few-shot views and draw equal the INP-Former code's (utils.augmentation, random.sample).

The official steps are written out here from their definitions in the INP-Former code
(``aug_funcs.py``: ``rot_img`` / ``translation_img`` are ``affine_grid`` + ``grid_sample``
with reflection padding on a 2 x 3 matrix, ``hflip_img`` flips the width, ``grey_img`` is
kornia's ``rgb_to_grayscale`` repeated to three channels, ``rot90_img`` is kornia's
``rotate`` by 90 / 180 / 270 degrees, counter-clockwise about the centre), independently of
ours where an exact reference exists (integer shifts, torch.rot90, torchvision's rotate).
"""

from __future__ import annotations

import math
import random
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from omegaconf import OmegaConf

from filterformer.data.few_shot import FewShotViews, ViewSet, draw_shots
from filterformer.data.sample import Sample
from filterformer.errors import ConfigError
from filterformer.runs.compose import config_dir

OFFICIAL_ANGLES = [
    -math.pi / 4,
    -3 * math.pi / 16,
    -math.pi / 8,
    -math.pi / 16,
    math.pi / 16,
    math.pi / 8,
    3 * math.pi / 16,
    math.pi / 4,
]
OFFICIAL_SHIFTS = [
    (0.2, 0.2),
    (-0.2, 0.2),
    (-0.2, -0.2),
    (0.2, -0.2),
    (0.1, 0.1),
    (-0.1, 0.1),
    (-0.1, -0.1),
    (0.1, -0.1),
]
KORNIA_GREY = (0.299, 0.587, 0.114)


def configured_views() -> FewShotViews:
    """The views of configs/setting/few_shot.yaml, as ff-train builds them."""
    views = OmegaConf.load(config_dir() / "setting" / "few_shot.yaml").setting.views
    return FewShotViews(
        rotations=tuple(views.rotations),
        translations=tuple(tuple(t) for t in views.translations),
        hflip=views.hflip,
        grey_weights=tuple(views.grey_weights),
        quarter_turns=tuple(views.quarter_turns),
    )


def official_affine(image: torch.Tensor, theta: list[list[float]]) -> torch.Tensor:
    """aug_funcs.rot_img / translation_img: affine_grid + grid_sample, reflection, defaults."""
    matrix = torch.tensor(theta, dtype=torch.float32)[None]
    grid = F.affine_grid(matrix, [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, padding_mode="reflection", align_corners=False)[0]


def official_views(image: torch.Tensor) -> list[torch.Tensor]:
    """utils.augmentation before its shuffle, on a square 3 x S x S image."""
    views = [image]
    for angle in OFFICIAL_ANGLES:
        cos, sin = math.cos(angle), math.sin(angle)
        views.append(official_affine(image, [[cos, -sin, 0], [sin, cos, 0]]))
    for a, b in OFFICIAL_SHIFTS:
        views.append(official_affine(image, [[1, 0, a], [0, 1, b]]))
    views.append(image.flip(-1))
    r, g, b = image
    views.append((KORNIA_GREY[0] * r + KORNIA_GREY[1] * g + KORNIA_GREY[2] * b).expand(3, -1, -1))
    views += [torch.rot90(image, k, dims=(-2, -1)) for k in (1, 2, 3)]  # kornia: anti-clockwise
    return views


def test_the_config_holds_the_official_views():
    views = configured_views()
    np.testing.assert_allclose(np.radians(views.rotations), OFFICIAL_ANGLES, rtol=1e-12)
    assert views.translations == tuple(OFFICIAL_SHIFTS)
    assert views.hflip and views.grey_weights == KORNIA_GREY and views.quarter_turns == (1, 2, 3)
    assert views.count == 22


def test_views_equal_the_official_function_view_for_view():
    image = torch.randn(3, 28, 28, generator=torch.Generator().manual_seed(0))
    ours = configured_views()(image)
    reference = official_views(image)  # 1e-4: grid_sample's rounding of exact pixel positions
    assert ours.shape == (22, 3, 28, 28)
    for index, (mine, theirs) in enumerate(zip(ours, reference, strict=True)):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0, msg=f"view {index}")


def test_shifts_are_whole_pixels_reflected_at_the_border():
    """On a 20 x 20 image, 0.1 is one pixel: view(x) = image(x + shift), mirrored at the edge."""
    image = torch.arange(3 * 20 * 20, dtype=torch.float32).reshape(3, 20, 20)
    views = configured_views()(image)[9:17]
    padded = np.pad(image.numpy(), ((0, 0), (2, 2), (2, 2)), mode="symmetric")
    for view, (a, b) in zip(views, OFFICIAL_SHIFTS, strict=True):
        dx, dy = round(a * 10), round(b * 10)
        expected = padded[:, 2 + dy : 22 + dy, 2 + dx : 22 + dx]
        np.testing.assert_allclose(view.numpy(), expected, atol=1e-3)


def test_quarter_turns_rotate_anticlockwise_about_the_centre():
    square = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    turns = configured_views()(square)[19:]
    for k, view in zip((1, 2, 3), turns, strict=True):  # torchvision: counter-clockwise
        torch.testing.assert_close(view, TF.rotate(square, 90.0 * k), atol=1e-4, rtol=0)
    # not square (5 x 7): the output keeps its size; inside, pixel (y, x) comes from the
    # input at (cy + (x - cx), cx - (y - cy)), the centre (2, 3) staying where it is
    image = torch.arange(35, dtype=torch.float32).reshape(1, 5, 7).expand(3, -1, -1)
    turned = FewShotViews((), (), False, None, (1,))(image)[1, 0]
    for y, x in [(2, 3), (0, 3), (4, 3), (2, 1), (2, 5), (1, 2)]:
        source = (2 + (x - 3), 3 - (y - 2))
        assert turned[y, x].item() == pytest.approx(image[0][source].item(), abs=1e-3)


def sample(category: str, index: int) -> Sample:
    relpath = PurePosixPath(f"train/good/{index:03d}")
    return Sample(Path(f"/{category}/{relpath}.png"), category, "train", relpath, 0, "", None, 8, 8)


def test_draw_is_the_official_random_sample_stream():
    categories = [[sample(c, i) for i in range(n)] for c, n in (("a", 20), ("b", 9), ("c", 12))]
    drawn = draw_shots(categories, 4, seed=1)
    random.seed(1)  # INP-Former code: setup_seed(1), then random.sample per category in order
    official = [random.sample(samples, 4) for samples in categories]
    assert drawn == official
    assert draw_shots(categories, 4, seed=1) == drawn  # a function of the seed
    assert draw_shots(categories, 4, seed=2) != drawn


def test_too_many_shots_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"setting.shots=5: a has 4 training images"):
        draw_shots([[sample("a", i) for i in range(4)]], 5, seed=1)


def test_view_set_holds_every_view_of_every_image_shuffled_per_image():
    generator = torch.Generator().manual_seed(3)
    inputs = [torch.randn(3, 14, 14, generator=generator) for _ in range(2)]
    views = configured_views()
    dataset = ViewSet(inputs, views, seed=1)
    assert len(dataset) == 44
    for index, image in enumerate(inputs):
        block = dataset.views[22 * index : 22 * (index + 1)]
        expected = views(image)
        order = [int(torch.argmin((expected - v).abs().flatten(1).sum(1))) for v in block]
        assert sorted(order) == list(range(22)) and order != list(range(22))
    assert torch.equal(ViewSet(inputs, views, seed=1).views, dataset.views)
