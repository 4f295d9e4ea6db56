"""Network input geometry (resize, fit, crop, normalise, and the way back) and augmentation.

Images are H x W x 3 uint8 RGB NumPy arrays until :meth:`InputGeometry.to_array` turns them
into a 3 x h x w float32 array (:meth:`InputGeometry.to_tensor`: the same as a torch tensor).
:class:`InputGeometry` also maps an anomaly map made at network resolution back to the original
image size, undoing the crop by padding (never stretching) and cutting a letterboxed image's
area out of the input before resizing it back.

The module is NumPy and OpenCV only (torch is imported by the three methods that return
tensors), so the torch-free runtime (:mod:`filterformer.runtime`) and the torch models share
this one implementation of the preprocessing and the way back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
from PIL import Image

from filterformer.errors import ConfigError

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Interpolation = Literal["area", "bilinear", "pil_bilinear"]
INTERPOLATIONS: tuple[str, ...] = ("area", "bilinear", "pil_bilinear")
Fit = Literal["squash", "pad", "short_side"]
FITS: tuple[str, ...] = ("squash", "pad", "short_side")

Box = tuple[int, int, int, int]
"""(top, left, h, w) of a rectangle inside an image."""


class InputGeometry:
    """Resize to ``resize`` (H, W) as ``fit`` says, optionally centre-crop to ``crop``, normalise.

    ``fit`` says how an image of any aspect ratio meets the network input:

    - ``squash`` (default; the MVTec AD 2 recipes and INP-Former): stretched to H x W whatever
      its aspect ratio, then centre-cropped to ``crop`` if one is given;
    - ``pad``: scaled with its aspect ratio kept until it fits inside H x W, and centred on an
      H x W canvas of the normalisation mean (zeros after normalising): letterboxing. The
      maps' letterbox bands are cut off before they are resized back to the original size;
    - ``short_side``: as ``pad``, on a canvas that :func:`short_side_size` fitted to the
      typical image of the data (its short side becomes min(H, W), its long side the multiple
      of the encoder's patch size at or above its scaled long side); ff-train stores that
      canvas as ``input.resize``. The typical image then fills the canvas but for less than
      one patch of padding along its long side.

    Every image therefore becomes one network input shape, :attr:`input_size`, whatever its
    aspect ratio: batches never mix shapes, and a folder of images of several aspect ratios
    keeps each one's ratio (those unlike the typical image get wider letterbox bands).
    A crop is for ``squash`` only.

    ``interpolation`` (one of :data:`INTERPOLATIONS`) picks the resize:

    - ``area`` (default): ``cv2.INTER_AREA`` when shrinking (anti-aliased, essential when
      5 Mpx images become a few hundred pixels), ``cv2.INTER_LINEAR`` when enlarging;
    - ``bilinear``: ``cv2.INTER_LINEAR`` always (no anti-aliasing);
    - ``pil_bilinear``: PIL's ``Image.resize(..., BILINEAR)`` on the uint8 image, which is
      what the official INP-Former pipeline (torchvision ``Resize`` on a PIL image) computes,
      bit for bit; for parity with its published numbers.

    The crop box is placed exactly as torchvision's ``CenterCrop`` places it.
    """

    def __init__(
        self,
        resize: Sequence[int],
        crop: Sequence[int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: Interpolation = "area",
        fit: Fit = "squash",
    ) -> None:
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"input.interpolation {interpolation!r} is unknown; choose one of "
                f"{', '.join(INTERPOLATIONS)}."
            )
        if fit not in FITS:
            raise ConfigError(f"input.fit {fit!r} is unknown; choose one of {', '.join(FITS)}.")
        self.interpolation = interpolation
        self.fit = fit
        self.resize_hw = _size_pair(resize, "resize")
        self.crop_hw = None if crop is None else _size_pair(crop, "crop")
        if self.crop_hw and fit != "squash":
            raise ConfigError(
                f"input.crop {list(self.crop_hw)} needs input.fit=squash (got {fit!r}): a "
                "letterboxed image would lose its border. Set input.crop=null or input.fit=squash."
            )
        if self.crop_hw and any(c > r for c, r in zip(self.crop_hw, self.resize_hw, strict=True)):
            raise ConfigError(
                f"Centre crop {self.crop_hw} is larger than the resize {self.resize_hw}; "
                "the crop (h, w) must fit inside the resized image."
            )
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def __repr__(self) -> str:
        return (
            f"InputGeometry(resize={self.resize_hw}, crop={self.crop_hw}, "
            f"interpolation={self.interpolation!r}, fit={self.fit!r})"
        )

    def record(self) -> dict[str, Any]:
        """The settings as JSON (export.json's ``preprocessing``); :meth:`from_record` reads it."""
        return {
            "resize": list(self.resize_hw),
            "fit": self.fit,
            "crop": None if self.crop_hw is None else list(self.crop_hw),
            "interpolation": self.interpolation,
            "scale": 1 / 255,
            "mean": [float(f"{v:.7g}") for v in self.mean.ravel()],
            "std": [float(f"{v:.7g}") for v in self.std.ravel()],
            "letterbox_value": 0.0,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> InputGeometry:
        """The geometry :meth:`record` describes (float32 mean and std, as it rounded them)."""
        return cls(
            record["resize"],
            record.get("crop"),
            record["mean"],
            record["std"],
            record["interpolation"],
            record["fit"],
        )

    @property
    def input_size(self) -> tuple[int, int]:
        """(h, w) of the network input: the crop if any, else the resize."""
        return self.crop_hw or self.resize_hw

    @property
    def crop_box(self) -> Box:
        """(top, left, h, w) of the crop inside the resized image (torchvision's rounding)."""
        height, width = self.resize_hw
        crop_h, crop_w = self.input_size
        top = int(round((height - crop_h) / 2.0))
        left = int(round((width - crop_w) / 2.0))
        return top, left, crop_h, crop_w

    def scaled_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) an H x W image is resized to: the resize size, or its aspect-kept fit in it."""
        if self.fit == "squash":
            return self.resize_hw
        scale = min(self.resize_hw[0] / height, self.resize_hw[1] / width)
        return tuple(  # type: ignore[return-value]
            min(limit, max(1, int(round(side * scale))))
            for side, limit in zip((height, width), self.resize_hw, strict=True)
        )

    def image_box(self, height: int, width: int) -> Box:
        """(top, left, h, w) of an H x W image's pixels in the network input (before a crop).

        The whole resize canvas for ``squash``; the centred letterbox area otherwise.
        """
        scaled_h, scaled_w = self.scaled_size(height, width)
        canvas_h, canvas_w = self.resize_hw
        return (canvas_h - scaled_h) // 2, (canvas_w - scaled_w) // 2, scaled_h, scaled_w

    def resize(self, image: np.ndarray) -> np.ndarray:
        """Resize an H x W (x 3) uint8 image to its :meth:`scaled_size`."""
        return self.resize_to(image, self.scaled_size(*image.shape[:2]))

    def resize_to(self, image: np.ndarray, size: Sequence[int]) -> np.ndarray:
        """Resize an H x W (x 3) uint8 image to ``size`` (h, w) by the geometry's interpolation."""
        height, width = (int(v) for v in size)
        if image.shape[:2] == (height, width):
            return image
        if self.interpolation == "pil_bilinear":
            resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(resized)
        shrink = height <= image.shape[0] and width <= image.shape[1]
        area = self.interpolation == "area" and shrink
        return cv2.resize(
            image, (width, height), interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR
        )

    def center_crop(self, array: np.ndarray) -> np.ndarray:
        """Cut the crop box out of an array at the resize size (identity without a crop)."""
        top, left, crop_h, crop_w = self.crop_box
        return array[top : top + crop_h, left : left + crop_w]

    def normalize_array(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB -> 3 x H x W float32, scaled to [0, 1] then standardised."""
        # one (writable, contiguous) copy: cached images are read-only arrays
        array = image.transpose(2, 0, 1).astype(np.float32, order="C")
        array /= np.float32(255.0)
        array -= self.mean
        array /= self.std
        return array

    def input_array(self, resized: np.ndarray) -> np.ndarray:
        """The network input from an image already at its :meth:`scaled_size` (e.g. augmented).

        ``squash``: centre crop and normalise. Otherwise normalise and centre on a canvas of
        zeros (the normalisation mean) of the resize size.
        """
        if self.fit == "squash":
            return self.normalize_array(self.center_crop(resized))
        top, left, height, width = self.image_box(*resized.shape[:2])
        if (height, width) != resized.shape[:2]:
            raise ValueError(
                f"image has shape {resized.shape[:2]}, expected its scaled size {(height, width)}"
            )
        canvas = np.zeros((3, *self.resize_hw), dtype=np.float32)
        canvas[:, top : top + height, left : left + width] = self.normalize_array(resized)
        return canvas

    def to_array(self, image: np.ndarray) -> np.ndarray:
        """The network input for one image: resize, centre crop or letterbox, normalise."""
        return self.input_array(self.resize(image))

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        """:meth:`normalize_array` as a torch tensor."""
        return _tensor(self.normalize_array(image))

    def to_input(self, resized: np.ndarray) -> torch.Tensor:
        """:meth:`input_array` as a torch tensor."""
        return _tensor(self.input_array(resized))

    def to_tensor(self, image: np.ndarray) -> torch.Tensor:
        """:meth:`to_array` as a torch tensor."""
        return _tensor(self.to_array(image))

    def from_original_mask(self, mask: np.ndarray) -> np.ndarray:
        """A bool mask at the original size, brought to network input resolution (nearest)."""
        top, left, height, width = self.image_box(*mask.shape[:2])
        resized = cv2.resize(
            np.asarray(mask, dtype=np.uint8), (width, height), interpolation=cv2.INTER_NEAREST
        )
        canvas = np.zeros(self.resize_hw, dtype=np.uint8)
        canvas[top : top + height, left : left + width] = resized
        return self.center_crop(canvas) > 0

    def to_original(self, amap: np.ndarray, original_hw: Sequence[int]) -> np.ndarray:
        """An h x w map at network input resolution -> float32 H x W at the original size.

        ``squash``: the map is put back in its crop box inside a canvas of the resize size; the
        rest of the canvas (never seen by the network) gets the map's minimum, i.e. "not
        scored". ``pad`` / ``short_side``: the image's letterbox area is cut out of the map.
        Either is then resized bilinearly to ``original_hw``.
        """
        if hasattr(amap, "detach"):  # a torch tensor, wherever it is
            amap = amap.detach().float().cpu().numpy()
        amap = np.asarray(amap, dtype=np.float32)
        if amap.shape != self.input_size:
            raise ValueError(
                f"map has shape {amap.shape}, expected the network input size {self.input_size}"
            )
        height, width = (int(v) for v in original_hw)
        if self.fit == "squash":
            top, left, crop_h, crop_w = self.crop_box
            area = np.full(self.resize_hw, amap.min(), dtype=np.float32)
            area[top : top + crop_h, left : left + crop_w] = amap
        else:
            top, left, box_h, box_w = self.image_box(height, width)
            area = amap[top : top + box_h, left : left + box_w]
        return cv2.resize(area, (width, height), interpolation=cv2.INTER_LINEAR)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A NumPy array as a torch tensor (sharing its memory); torch is imported here only."""
    import torch

    return torch.from_numpy(array)


def short_side_size(short: int, image_hw: Sequence[int], multiple: int) -> tuple[int, int]:
    """The ``short_side`` canvas (h, w) for images of ``image_hw``, oriented as they are.

    Its short side is ``short``; its long side keeps the image's aspect ratio, rounded up to a
    multiple of ``multiple`` (the encoder's patch size), so the image fits with its short side
    exactly ``short`` and less than one patch of padding along its long side.
    """
    height, width = (int(v) for v in image_hw)
    if min(height, width) < 1:
        raise ConfigError(f"image size {height}x{width} must be positive.")
    if short < 1 or short % multiple:
        example = max(multiple, short // multiple * multiple)
        raise ConfigError(
            f"input.fit=short_side: the short side min(input.resize) = {short} must be a positive "
            f"multiple of the patch size {multiple}; e.g. {example}."
        )
    patches = -(-max(height, width) * short // (min(height, width) * multiple))  # exact ceil
    long = patches * multiple
    return (short, long) if height <= width else (long, short)


class TrainAugment:
    """Training augmentations of the Filter-Former recipe, each one off when its argument is None.

    Geometric ops (random resized crop, rotation, flips) are composed into one affine warp
    that is applied to the image (bilinear) and to an optional mask (nearest) alike, with
    the same reflecting border, so the two stay aligned. Photometric ops (colour jitter,
    directional light) touch the image only. Output size = input size.

    - ``random_resized_crop``: ``{"scale": (lo, hi), "ratio": (lo, hi)}`` (area fraction and
      aspect ratio of the crop, as torchvision's RandomResizedCrop).
    - ``color_jitter``: ``{"brightness", "contrast", "saturation", "hue"}`` amplitudes as
      torchvision's ColorJitter (hue in [0, 0.5]); missing keys are 0.
    - ``rotation``: maximum angle in degrees (uniform in [-rotation, rotation]).
    - ``hflip`` / ``vflip``: flip probabilities.
    - ``directional_light``: ``{"strength": s, "p": p}``: with probability p, multiply by a
      linear brightness ramp 1 + a * t, a ~ U(0, s), t in [-1, 1] along a random direction.
    - ``lighting``: the ISVL hybrid code's lighting augmentation (:func:`isvl_lighting`), applied
      first, before the flips, as there.
    """

    def __init__(
        self,
        random_resized_crop: Mapping[str, Any] | None = None,
        color_jitter: Mapping[str, float] | None = None,
        rotation: float | None = None,
        hflip: float | None = None,
        vflip: float | None = None,
        directional_light: Mapping[str, float] | None = None,
        lighting: Mapping[str, Any] | None = None,
    ) -> None:
        self.random_resized_crop = _options(
            random_resized_crop,
            {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)},
            "random_resized_crop",
        )
        self.color_jitter = _options(
            color_jitter,
            {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0},
            "color_jitter",
        )
        self.rotation = rotation
        self.hflip = hflip
        self.vflip = vflip
        self.directional_light = _options(
            directional_light, {"strength": 0.3, "p": 0.5}, "directional_light"
        )
        self.lighting = _options(lighting, LIGHTING, "lighting")

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        rng: np.random.Generator | int | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Augment an H x W x 3 uint8 image (and an H x W mask the same way)."""
        rng = np.random.default_rng(rng)
        if self.lighting is not None:
            image = isvl_lighting(image, self.lighting, rng)
        matrix = self._geometry(image.shape[:2], rng)
        if matrix is not None:
            image = _warp(image, matrix, cv2.INTER_LINEAR)
            if mask is not None:
                mask = _warp(np.asarray(mask, dtype=np.uint8), matrix, cv2.INTER_NEAREST) > 0
        if self.color_jitter is not None:
            image = color_jitter(image, self.color_jitter, rng)
        if self.directional_light is not None and rng.random() < self.directional_light["p"]:
            image = directional_light(image, self.directional_light["strength"], rng)
        return image, mask

    def _geometry(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray | None:
        """3 x 3 matrix mapping input pixel centres to output ones; None for the identity."""
        height, width = shape
        matrix = np.eye(3)
        if self.random_resized_crop is not None:
            top, left, crop_h, crop_w = _random_box(shape, self.random_resized_crop, rng)
            sx, sy = width / crop_w, height / crop_h
            # pixel centres: x_out + 0.5 = (x_in - left + 0.5) * sx
            matrix = np.array(
                [[sx, 0, (0.5 - left) * sx - 0.5], [0, sy, (0.5 - top) * sy - 0.5], [0, 0, 1]]
            )
        if self.hflip is not None and rng.random() < self.hflip:
            matrix = np.array([[-1, 0, width - 1], [0, 1, 0], [0, 0, 1]]) @ matrix
        if self.vflip is not None and rng.random() < self.vflip:
            matrix = np.array([[1, 0, 0], [0, -1, height - 1], [0, 0, 1]]) @ matrix
        if self.rotation is not None:
            angle = rng.uniform(-self.rotation, self.rotation)
            centre = ((width - 1) / 2.0, (height - 1) / 2.0)
            rotate = np.vstack([cv2.getRotationMatrix2D(centre, angle, 1.0), [0, 0, 1]])
            matrix = rotate @ matrix
        return None if np.allclose(matrix, np.eye(3)) else matrix


def _warp(array: np.ndarray, matrix: np.ndarray, interpolation: int) -> np.ndarray:
    height, width = array.shape[:2]
    return cv2.warpAffine(
        array, matrix[:2], (width, height), flags=interpolation, borderMode=cv2.BORDER_REFLECT_101
    )


def _random_box(
    shape: tuple[int, int], options: Mapping[str, Any], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop with a random area fraction and aspect ratio.

    The usual sampling scheme: ten tries to fit a box, else the largest centred box whose
    aspect ratio is within the allowed range.
    """
    height, width = shape
    area = height * width
    log_ratio = np.log(options["ratio"])
    for _ in range(10):
        target = area * rng.uniform(*options["scale"])
        ratio = np.exp(rng.uniform(*log_ratio))
        crop_w = int(round(np.sqrt(target * ratio)))
        crop_h = int(round(np.sqrt(target / ratio)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    ratio = np.clip(width / height, *options["ratio"])
    crop_w, crop_h = width, height
    if width / height > ratio:
        crop_w = int(round(height * ratio))
    else:
        crop_h = int(round(width / ratio))
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def color_jitter(
    image: np.ndarray, amplitudes: Mapping[str, float], rng: np.random.Generator
) -> np.ndarray:
    """Random brightness, contrast, saturation (factors in [1-a, 1+a]) and hue shift."""
    out = image.astype(np.float32)
    grey_weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    brightness, contrast, saturation = (
        rng.uniform(max(0.0, 1 - a), 1 + a)
        for a in (amplitudes["brightness"], amplitudes["contrast"], amplitudes["saturation"])
    )
    out = out * brightness
    mean_grey = (out @ grey_weights).mean()
    out = (out - mean_grey) * contrast + mean_grey
    grey = (out @ grey_weights)[:, :, None]
    out = _to_uint8(grey + (out - grey) * saturation)
    if amplitudes["hue"] > 0:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL)
        shift = int(round(rng.uniform(-amplitudes["hue"], amplitudes["hue"]) * 256))
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int32) + shift) % 256
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    return out


def directional_light(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Multiply by a smooth linear brightness ramp along a random direction."""
    height, width = image.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    amplitude = rng.uniform(0, strength)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (xs / max(width - 1, 1) - 0.5) * np.cos(angle)
    ramp += (ys / max(height - 1, 1) - 0.5) * np.sin(angle)
    factor = 1.0 + amplitude * ramp / max(float(np.abs(ramp).max()), 1e-6)
    return _to_uint8(image.astype(np.float32) * factor[:, :, None])


LIGHTING: dict[str, Any] = {
    "p": 0.5,
    "brightness": (0.5, 1.2),
    "regions": 3,
    "region_size": (30, 70),
    "region_brightness": (0.5, 1.5),
    "halves": (1.5, 0.7),
}
"""The ISVL hybrid code's lighting settings (isvl.py, RandomLightingAugmentation(p=0.5));
configs/suite/isvl.yaml writes them out with their source."""


def pil_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """PIL's ``ImageEnhance.Brightness(image).enhance(factor)`` on uint8 pixels: the product
    in float32, clipped to [0, 255] and truncated (PIL blends with black this way)."""
    scaled = np.float32(factor) * image.astype(np.float32)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def isvl_lighting(
    image: np.ndarray, options: Mapping[str, Any], rng: np.random.Generator
) -> np.ndarray:
    """The ISVL hybrid code's lighting change: with probability ``p`` one of three, equally
    likely (each a PIL brightness change, :func:`pil_brightness`):

    - the whole image by a factor ~ U(``brightness``) (torchvision's ColorJitter);
    - ``regions`` rectangles one after another, sides ~ U{``region_size``} pixels (clipped to
      the image), each by a factor ~ U(``region_brightness``);
    - the left half (columns < W // 2) by ``halves[0]``, the rest by ``halves[1]``.
    """
    if rng.random() >= options["p"]:
        return image
    method = int(rng.integers(3))
    if method == 0:
        return pil_brightness(image, rng.uniform(*options["brightness"]))
    out = image.copy()
    height, width = image.shape[:2]
    if method == 1:
        low, high = (int(v) for v in options["region_size"])
        for _ in range(int(options["regions"])):
            w = min(int(rng.integers(low, high + 1)), width)
            h = min(int(rng.integers(low, high + 1)), height)
            x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            factor = rng.uniform(*options["region_brightness"])
            out[y0 : y0 + h, x0 : x0 + w] = pil_brightness(out[y0 : y0 + h, x0 : x0 + w], factor)
        return out
    mid = width // 2
    out[:, :mid] = pil_brightness(image[:, :mid], options["halves"][0])
    out[:, mid:] = pil_brightness(image[:, mid:], options["halves"][1])
    return out


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _size_pair(size: Sequence[int], name: str) -> tuple[int, int]:
    """A validated (H, W) pair of positive ints."""
    pair = tuple(int(v) for v in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ConfigError(f"{name} must be a (height, width) pair of positive ints, got {size}.")
    return pair  # type: ignore[return-value]


def _options(
    given: Mapping[str, Any] | None, defaults: Mapping[str, Any], name: str
) -> dict[str, Any] | None:
    """Merge user options over defaults; None stays None (the op is off)."""
    if given is None:
        return None
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"{name}: unknown options {unknown}; valid: {', '.join(defaults)}.")
    return {**defaults, **given}
