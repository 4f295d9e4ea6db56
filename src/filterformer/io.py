"""Reading and writing images, masks and anomaly maps.

Every reader raises :class:`DataError` naming the file and the fix; every writer is atomic
(it writes a temporary file in the target folder and renames it into place), so an
interrupted run never leaves a half-written result and never damages an earlier one.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import secrets
import stat
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile

from filterformer.errors import ConfigError, DataError

PARTIAL_MARK = ".partial-"
"""Infix of temporary files; :func:`remove_partials` deletes leftovers of a killed run."""
MAX_IMAGE_PIXELS = 2**27
"""Ours: the most pixels an image file may declare (134 MP, e.g. 11585 x 11585; far above
industrial cameras). A larger header is refused before any pixel is decoded: a small file
that claims gigapixels (a decompression bomb) would otherwise exhaust the memory."""


def _decode(path: Path) -> np.ndarray:
    """Decode any image file with its bit depth and channel count intact."""
    if not path.is_file():
        raise DataError(f"{path}: file not found. Check the path or the dataset root.")
    image_size(path)  # the header's size, refused before decoding when it is too large
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DataError(
            f"{path}: not a readable image (corrupt, truncated or not an image file). "
            "Replace it with an intact copy from the dataset archive, or remove it."
        )
    return image


def _to_uint8(image: np.ndarray, path: Path) -> np.ndarray:
    """Scale 8/16-bit or float data to uint8 over the full range of its type."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        # Full-range rescale 0..65535 -> 0..255 (x/257), never a truncating cast.
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if image.dtype in (np.float32, np.float64):
        return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise DataError(f"{path}: unsupported pixel type {image.dtype}; save it as 8- or 16-bit PNG.")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as H x W x 3 uint8 RGB; grey, 16-bit and RGBA inputs are converted."""
    path = Path(path)
    image = _to_uint8(_decode(path), path)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as H x W bool (any value > 0 is anomalous).

    ``shape`` is the (H, W) of the image the mask belongs to; a mismatch is an error, since
    masks are never resized for metrics.
    """
    path = Path(path)
    mask = _decode(path)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    mask = mask > 0
    if shape is not None and mask.shape != tuple(shape):
        raise DataError(
            f"{path}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image is "
            f"{shape[0]}x{shape[1]}. Masks must have the size of their image; "
            "use the dataset's original mask."
        )
    return mask


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image read from its header only (no full decode).

    A header that declares more than :data:`MAX_IMAGE_PIXELS` pixels is refused.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():  # PIL warns of large images; the limit is ours
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found. Check the path or the dataset root.") from None
    except Image.DecompressionBombError:  # PIL's own check, at twice its MAX_IMAGE_PIXELS
        raise DataError(_too_large(path, f"over {2 * Image.MAX_IMAGE_PIXELS} pixels")) from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(
            f"{path}: not a readable image ({err}). Replace it with an intact copy."
        ) from None
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(_too_large(path, f"{width} x {height} pixels"))
    return height, width


def _too_large(path: Path, declared: str) -> str:
    return (
        f"{path}: its header declares {declared}; an image may have at most "
        f"{MAX_IMAGE_PIXELS}, so it is not decoded (a corrupt file or a decompression bomb). "
        "Replace it, or resize it first."
    )


def read_anomaly_map(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a 2-D anomaly map (TIFF, any float type) as float32, refusing NaN/inf and bad sizes."""
    return as_score_map(read_tiff_map(path, shape), path)


def read_tiff_map(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a 2-D TIFF map in its stored dtype (checks of the dtype need it), refusing
    missing or unreadable files and sizes other than ``shape``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: anomaly map not found. Run ff-predict for this split first.")
    try:
        amap = tifffile.imread(path)
    except Exception as err:  # tifffile raises many types for broken files
        raise DataError(f"{path}: not a readable TIFF ({err}). Re-export the map.") from None
    amap = np.squeeze(amap)
    if amap.ndim != 2:
        raise DataError(f"{path}: anomaly map has shape {amap.shape}; expected a 2-D H x W map.")
    if shape is not None and amap.shape != tuple(shape):
        raise DataError(
            f"{path}: map is {amap.shape[0]}x{amap.shape[1]} (HxW) but its image is "
            f"{shape[0]}x{shape[1]}. Maps must be at the original image size."
        )
    return amap


def as_score_map(amap: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """A map read from ``path`` as float32 scores, refusing NaN and inf."""
    amap = amap.astype(np.float32)
    if not np.isfinite(amap).all():
        raise DataError(
            f"{path}: anomaly map holds NaN or inf values. Rescale the scores so they are "
            "finite in float16 (< 65504) before writing."
        )
    return amap


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    What is renamed into place has the permissions the umask allows, as a file made by
    ``open`` would (not the 0600 of a temporary file, which some writers, e.g. safetensors,
    put in the temporary path's place). An OSError about the temporary file, or about no file
    (a full disk names none), is raised again naming ``path``, so that the user learns which
    output could not be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path: Path | None = None
    try:
        tmp_path = _new_partial(path)
        mode = stat.S_IMODE(tmp_path.stat().st_mode)
        yield tmp_path
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except OSError as err:
        about_tmp = err.filename is None or tmp_path is None or str(err.filename) == str(tmp_path)
        if err.errno is None or not about_tmp:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def _new_partial(path: Path) -> Path:
    """Create an empty temporary file with a unique name beside ``path`` (mode 0o666 & ~umask)."""
    while True:
        tmp = path.with_name(f".{path.stem}{PARTIAL_MARK}{secrets.token_hex(4)}{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def remove_partials(folder: str | os.PathLike, *, recursive: bool = True) -> int:
    """Delete temporary files a killed run left in ``folder`` (and below); return how many."""
    pattern = f".*{PARTIAL_MARK}*"
    found = Path(folder).rglob(pattern) if recursive else Path(folder).glob(pattern)
    count = 0
    for tmp in found:
        tmp.unlink(missing_ok=True)
        count += 1
    return count


def write_tiff_float16(path: str | os.PathLike, amap: np.ndarray) -> None:
    """Write a 2-D map as a float16 TIFF (the benchmark server's format), atomically."""
    amap = np.asarray(amap)
    if amap.ndim != 2:
        raise DataError(f"{path}: refusing to write a map of shape {amap.shape}; need H x W.")
    with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
        half = amap.astype(np.float16)
    if not np.isfinite(half).all():
        raise DataError(
            f"{path}: map is not finite in float16 (NaN, or a value beyond 65504). "
            "Rescale the scores before export."
        )
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, half)


def write_png(path: str | os.PathLike, image: np.ndarray, compression: int = 3) -> None:
    """Write an 8-bit grey (H x W) or RGB (H x W x 3) PNG atomically.

    ``compression``: zlib level 0-9 (OpenCV's default 3; figures use 1: faster, a bit larger).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise DataError(f"{path}: PNG data must be uint8, got {image.dtype}.")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    encoded, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not encoded:
        raise DataError(f"{path}: OpenCV could not encode this {image.shape} image as PNG.")
    with atomic_path(path) as tmp:  # Python writes it: a full disk is an OSError naming it
        tmp.write_bytes(data.tobytes())


def write_mask_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a binary map as 8-bit single-channel PNG with values {0, 255}."""
    write_png(path, np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike, what: str, fix: str) -> Any:
    """The JSON document in ``path``; an unreadable one is a :class:`DataError` naming
    ``what`` it should be and the ``fix``."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise DataError(f"{path}: not a readable {what} ({err}). {fix}") from None


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_csv(
    path: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    fieldnames: Sequence[str] | None = None,
) -> None:
    """Write a list of dict rows as CSV atomically."""
    fieldnames = list(fieldnames or (rows[0].keys() if rows else []))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def outermost_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None when ``path`` exists).

    Creating ``path`` creates this folder; removing it again leaves the disk as it was.
    """
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def check_name(name: Any, what: str) -> str:
    """``name`` if it can be one component of a path (a file or folder name), else a
    :class:`ConfigError` naming ``what`` it is.

    Every name that becomes part of an output path (a category, a split, an image stem)
    passes here, so that none can lead out of the folder it is written into: it must be a
    non-empty string, not ``.`` or ``..``, without ``/``, ``\\`` or NUL, at most 255 bytes.
    """
    bad = (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or any(c in name for c in "/\\\0")
        or len(name.encode()) > 255
    )
    if bad:
        raise ConfigError(
            f"{what} {name!r}: not usable as a file or folder name (it becomes part of the "
            "output paths). Use a plain name: no '/', '\\' or NUL, not '.' or '..', e.g. "
            "'bottles'."
        )
    return name


_LOOP = "a symbolic link on this path leads back to itself; remove the loop or choose another path"


def resolved(path: str | os.PathLike) -> Path:
    """``path`` made absolute with every symbolic link resolved; a link loop on it is a
    :class:`DataError` (Python before 3.13 raises RuntimeError for it, later ones leave it)."""
    try:
        real = Path(path).expanduser().resolve()
        real.stat()
    except FileNotFoundError:  # not made yet: fine
        return real
    except RuntimeError as err:
        raise DataError(f"{path}: {_LOOP} ({err}).") from None
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise DataError(f"{path}: {_LOOP}.") from None
    return real


def output_path(root: str | os.PathLike, *names: str) -> Path:
    """``root/names[0]/names[1]/...`` after checking each name (:func:`check_name`) and
    that the path, with symbolic links resolved, stays inside ``root``."""
    path = Path(root).joinpath(*(check_name(name, "path component") for name in names))
    top, real = resolved(root), resolved(path)
    if not real.is_relative_to(top):
        raise DataError(
            f"{path}: leads outside {root} (to {real}, through a symbolic link); remove the "
            "link or write to another folder."
        )
    return path


RUN_CONFIG = "config.yaml"
"""The file that makes a folder a run folder (written by ff-train)."""


def require_run_folder(run_dir: Path) -> Path:
    """``run_dir``'s config.yaml, or a :class:`ConfigError`: the folder is no run (torch-free,
    so the commands refuse a wrong ``--run`` at once)."""
    resolved(run_dir)  # a symbolic link loop is named as one
    file = Path(run_dir) / RUN_CONFIG
    if not file.is_file():
        what = "does not exist" if not Path(run_dir).exists() else f"has no {RUN_CONFIG}"
        raise ConfigError(
            f"{run_dir}: not a run folder ({what}). Pass a folder made by ff-train "
            "(it holds config.yaml, checkpoints/ and versions.json)."
        )
    return file
