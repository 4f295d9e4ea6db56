"""Image, mask and map reading/writing: bit depths, channel layouts, atomicity, bad files."""

from __future__ import annotations

import errno
import os
import stat

import cv2
import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import save_file

from conftest import png_header
from filterformer.errors import ConfigError, DataError, os_error_message
from filterformer.io import (
    MAX_IMAGE_PIXELS,
    atomic_path,
    check_name,
    image_size,
    output_path,
    read_anomaly_map,
    read_image,
    read_mask,
    read_tiff_map,
    remove_partials,
    resolved,
    write_json,
    write_mask_png,
    write_png,
    write_tiff_float16,
)


def test_grey_png_becomes_three_equal_channels(tmp_path):
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    image = read_image(tmp_path / "g.png")
    assert image.shape == (12, 10, 3) and image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], grey)


def test_16_bit_png_is_rescaled_over_the_full_range(tmp_path):
    k = np.arange(256, dtype=np.uint16)
    values = np.stack([257 * k, 257 * k], axis=0)  # 257 * k -> k exactly; 65535 -> 255
    values[1, :3] = [65535, 1, 128]  # 1/257 rounds to 0, 128/257 rounds to 0
    cv2.imwrite(str(tmp_path / "d.png"), values)
    image = read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(image[0, :, 0], np.arange(256))
    assert image[1, 0, 0] == 255 and image[1, 1, 0] == 0 and image[1, 2, 0] == 0


def test_rgba_drops_alpha_and_bgr_becomes_rgb(tmp_path):
    bgra = np.zeros((4, 5, 4), dtype=np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 7
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    image = read_image(tmp_path / "a.png")
    assert image.shape == (4, 5, 3)
    np.testing.assert_array_equal(image[0, 0], [30, 20, 10])


def test_image_size_reads_the_header(tmp_path):
    cv2.imwrite(str(tmp_path / "r.png"), np.zeros((7, 13), dtype=np.uint8))
    assert image_size(tmp_path / "r.png") == (7, 13)


def test_mask_is_bool_any_positive_and_size_checked(tmp_path):
    mask = np.array([[0, 1, 255], [0, 0, 128]], dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", shape=(2, 3)), mask > 0)
    with pytest.raises(DataError, match="m.png"):
        read_mask(tmp_path / "m.png", shape=(3, 2))


@pytest.mark.parametrize("content", [b"", b"not a png at all"])
def test_unreadable_files_name_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match=str(path)):
        read_image(path)
    with pytest.raises(DataError, match=str(path)):
        image_size(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_png_round_trip_is_exact_and_leaves_no_partial(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    write_png(tmp_path / "sub" / "x.png", image)
    np.testing.assert_array_equal(read_image(tmp_path / "sub" / "x.png"), image)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]


def test_mask_png_is_single_channel_0_255(tmp_path):
    write_mask_png(tmp_path / "m.png", np.eye(3, dtype=bool))
    raw = cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED)
    assert raw.ndim == 2 and set(np.unique(raw)) == {0, 255}


def test_float16_tiff_round_trip_and_non_finite_refused(tmp_path):
    amap = np.array([[0.0, 1.5], [1e3, -2.25]], dtype=np.float32)
    write_tiff_float16(tmp_path / "a.tiff", amap)
    np.testing.assert_array_equal(read_anomaly_map(tmp_path / "a.tiff", (2, 2)), amap)
    with pytest.raises(DataError, match="b.tiff"):
        write_tiff_float16(tmp_path / "b.tiff", np.array([[1e6]]))
    assert not (tmp_path / "b.tiff").exists()


def test_tiff_map_keeps_its_stored_type_until_read_as_scores(tmp_path):
    """ff-eval --maps needs the stored type to warn about integer maps."""
    tifffile.imwrite(tmp_path / "int.tiff", np.array([[0, 7], [255, 1]], dtype=np.uint8))
    raw = read_tiff_map(tmp_path / "int.tiff", (2, 2))
    assert raw.dtype == np.uint8
    scores = read_anomaly_map(tmp_path / "int.tiff", (2, 2))
    assert scores.dtype == np.float32 and scores[1, 0] == 255.0


def test_failed_write_keeps_the_old_file(tmp_path):
    write_json(tmp_path / "r.json", {"a": 1})
    with pytest.raises(TypeError):
        write_json(tmp_path / "r.json", {"a": object()})
    assert (tmp_path / "r.json").read_text() == '{\n  "a": 1\n}\n'
    assert remove_partials(tmp_path) == 0


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_permissions_the_umask_allows(tmp_path, umask):
    """Not the 0600 of a temporary file: a group sharing run folders can read them."""
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
        write_png(tmp_path / "b.png", np.zeros((2, 3), dtype=np.uint8))
        write_tiff_float16(tmp_path / "c.tiff", np.zeros((2, 3), dtype=np.float32))
        write_json(tmp_path / "a.json", {"a": 2})  # a replaced file too
        with atomic_path(tmp_path / "d.safetensors") as tmp:  # a writer that replaces `tmp`
            save_file({"x": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["a.json", "b.png", "c.tiff", "d.safetensors"], 0o666 & ~umask)


def test_a_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    """30000 x 30000 declared in a 57-byte file: 2.7 GB as RGB, never allocated."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(30000, 30000))
    for read in (image_size, read_image, read_mask):
        with pytest.raises(DataError, match=r"bomb.png: its header declares over \d+ pixels"):
            read(bomb)
    bomb.write_bytes(png_header(12000, 12000))  # between our limit and PIL's
    assert 12000 * 12000 > MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match=r"bomb.png: its header declares 12000 x 12000 pixels"):
        read_image(bomb)
    fine = tmp_path / "fine.png"
    fine.write_bytes(png_header(4000, 3000))  # 12 MP: only its header is read
    assert image_size(fine) == (3000, 4000)


def test_a_full_disk_while_writing_a_png_names_the_file(monkeypatch, tmp_path):
    """OpenCV only says False when it cannot write; the PNG is written from Python, so a full
    disk is the OSError that names the file (and becomes 'no space left', not 'writable')."""

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(type(tmp_path), "write_bytes", full)
    with pytest.raises(OSError) as err:
        write_png(tmp_path / "a.png", np.zeros((4, 5, 3), np.uint8))
    assert err.value.filename == str(tmp_path / "a.png")
    assert os_error_message(err.value).startswith(f"{tmp_path / 'a.png'}: no space left")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x", "a\\b", "a\0b", "x" * 256, 3, None])
def test_a_name_that_is_no_single_path_component_is_refused(name):
    with pytest.raises(ConfigError, match="category .*not usable as a file or folder name"):
        check_name(name, "category")


@pytest.mark.parametrize("name", ["vial", "fruit_jelly", "my bottles", "..hidden", "ü" * 100])
def test_plain_names_pass(name):
    assert check_name(name, "category") == name


def test_output_paths_stay_inside_their_root(tmp_path):
    out = tmp_path / "out"
    (out / "maps").mkdir(parents=True)
    assert output_path(out, "maps", "vial", "x.tiff") == out / "maps" / "vial" / "x.tiff"
    with pytest.raises(ConfigError, match="'..'"):
        output_path(out, "maps", "..", "x.tiff")
    (tmp_path / "elsewhere").mkdir()
    (out / "maps" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DataError, match="leads outside .* through a symbolic link"):
        output_path(out, "maps", "link", "x.tiff")
    linked_root = tmp_path / "linked_out"
    linked_root.symlink_to(out)  # the root itself may be a link
    assert output_path(linked_root, "maps", "y.tiff") == linked_root / "maps" / "y.tiff"


def test_a_symbolic_link_loop_is_named(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for path in (loop, loop / "below"):
        with pytest.raises(DataError, match="leads back to itself"):
            resolved(path)
    assert resolved(tmp_path / "new" / "folder") == (tmp_path / "new" / "folder").resolve()
