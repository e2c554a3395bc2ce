"""Reading (formats, modes, bit depths, damaged files) and writing (atomic, never over an input)."""

import os
import stat
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

import minisr.data.io as io
from minisr.data import ImageReadError, list_images, read_image, write_image


@pytest.fixture
def rgb(rng):
    return rng.integers(0, 256, size=(21, 34, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_lossless_round_trip(tmp_path, rgb, ext):
    for img in (rgb, rgb[..., 1]):
        path = write_image(tmp_path / f"img{img.ndim}{ext}", img)
        out = read_image(path)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, img)


def test_jpeg_is_read_as_uint8_rgb(tmp_path):
    yy, xx = np.mgrid[0:32, 0:48]
    smooth = np.stack([4 * yy, 5 * xx, 200 - 2 * yy - xx], axis=-1).astype(np.uint8)
    path = write_image(tmp_path / "a.jpg", smooth)
    out = read_image(path)
    assert out.shape == smooth.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - smooth).mean() < 3  # lossy, but close


def test_alpha_is_dropped_with_one_warning(tmp_path, rgb, monkeypatch):
    monkeypatch.setattr(io, "_alpha_warned", False)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 128, np.uint8)], axis=2)
    iio.imwrite(tmp_path / "a.png", rgba)
    iio.imwrite(tmp_path / "b.png", rgba)
    Image.fromarray(rgb[..., 0]).convert("LA").save(tmp_path / "grey_alpha.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
        np.testing.assert_array_equal(read_image(tmp_path / "b.png"), rgb)
        np.testing.assert_array_equal(read_image(tmp_path / "grey_alpha.png"), rgb[..., 0])
    alpha_warnings = [w for w in caught if "alpha" in str(w.message)]
    assert len(alpha_warnings) == 1 and "a.png" in str(alpha_warnings[0].message)


def test_sixteen_bit_and_float_are_scaled(tmp_path, rng):
    deep = rng.integers(0, 65536, size=(9, 11), dtype=np.uint16)
    iio.imwrite(tmp_path / "deep.png", deep)
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.floor(deep / 257.0 + 0.5).astype(np.uint8))  # MATLAB's im2uint8
    deep_rgb = (rng.integers(0, 256, size=(5, 6, 3)) * 257).astype(np.uint16)
    iio.imwrite(tmp_path / "deep.tif", deep_rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.tif"), deep_rgb // 257)
    unit = rng.random((7, 8)).astype(np.float32)
    iio.imwrite(tmp_path / "unit.tif", unit)
    np.testing.assert_array_equal(read_image(tmp_path / "unit.tif"), np.floor(unit * 255.0 + 0.5))
    palette = Image.fromarray(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)).convert("P")
    palette.save(tmp_path / "palette.png")
    assert read_image(tmp_path / "palette.png").shape == (6, 6, 3)


def test_truncated_png_names_the_file(tmp_path, rgb):
    good = write_image(tmp_path / "good.png", rgb)
    data = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated.png"):
        read_image(tmp_path / "truncated.png")


@pytest.mark.parametrize("content", [b"this is not an image\n", b""])
def test_non_image_named_png_names_the_file(tmp_path, content):
    (tmp_path / "fake.png").write_bytes(content)
    with pytest.raises(ImageReadError, match="fake.png"):
        read_image(tmp_path / "fake.png")


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    assert issubclass(ImageReadError, ValueError)


def test_write_refuses_to_overwrite(tmp_path, rgb):
    path = write_image(tmp_path / "out.png", rgb)
    with pytest.raises(FileExistsError, match="out.png"):
        write_image(path, rgb[::-1])
    np.testing.assert_array_equal(read_image(path), rgb)  # untouched
    write_image(path, rgb[::-1], overwrite=True)
    np.testing.assert_array_equal(read_image(path), rgb[::-1])


def test_write_never_touches_a_protected_input(tmp_path, rgb):
    src = write_image(tmp_path / "input.png", rgb)
    before = src.read_bytes()
    for target in (src, tmp_path / "." / "input.png"):
        with pytest.raises(FileExistsError, match="input"):
            write_image(target, rgb[::-1], overwrite=True, protect=[src])
    assert src.read_bytes() == before


def test_write_is_atomic_and_checks_its_input(tmp_path, rgb):
    write_image(tmp_path / "sub" / "a.png", rgb)  # creates the folder
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.png"]  # no temporary file left behind
    with pytest.raises(ValueError, match="uint8"):
        write_image(tmp_path / "b.png", rgb.astype(np.float32))
    with pytest.raises(ValueError, match="extension"):
        write_image(tmp_path / "c.xyz", rgb)
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "c.xyz").exists()


def test_list_images_filters_and_sorts(tmp_path, rgb):
    for name in ("b.png", "a.JPG", "c.bmp"):
        write_image(tmp_path / name.lower(), rgb)
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "dir.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.png", "c.bmp"]


def test_written_images_get_the_permissions_of_any_new_file(tmp_path):
    """Written under a temporary name and renamed, yet with the user's usual permissions (mkstemp's were 0600)."""
    mask = os.umask(0o022)
    try:
        out = write_image(tmp_path / "a.png", np.zeros((4, 5, 3), np.uint8))
        plain = tmp_path / "plain"
        plain.write_bytes(b"")
        assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644
    finally:
        os.umask(mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "plain"]  # no temporary file left
