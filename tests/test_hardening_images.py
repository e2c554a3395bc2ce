"""minisr/data/io.py's read path on bad and unusual images: decompression bombs refused from the header before
decoding (with a limit that can be raised), CMYK / palette / 16-bit converted to the right colours, invalid float
values refused; the service gets the same checks through to_uint8_image. The messages: tests/test_hardening_table.py."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_hardening_table import png_declaring

from minisr.data import ImageReadError, ImageTooLargeError, read_image
from minisr.data.io import describe_file, to_uint8_image


def test_bomb_is_refused_from_the_header(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(12000, 10000))  # 120 megapixels in ~200 bytes
    assert bomb.stat().st_size < 1000
    monkeypatch.delenv("MINISR_MAX_PIXELS", raising=False)
    decoded = []
    monkeypatch.setattr("imageio.v3.imread", lambda *a, **k: decoded.append(a) or np.zeros((1, 1), np.uint8))
    with pytest.raises(ImageTooLargeError, match="12000x10000 = 120,000,000 pixels, over the limit of 100,000,000"):
        read_image(bomb)
    with pytest.raises(ImageTooLargeError, match="over the limit of 50"):
        read_image(bomb, max_pixels=50)
    monkeypatch.setenv("MINISR_MAX_PIXELS", "1e3")
    small = tmp_path / "small.png"
    small.write_bytes(png_declaring(40, 30))
    with pytest.raises(ImageTooLargeError, match="40x30 = 1,200 pixels, over the limit of 1,000 .MINISR_MAX_PIXELS"):
        read_image(small)
    assert not decoded  # never decoded
    monkeypatch.setenv("MINISR_MAX_PIXELS", "many")
    with pytest.raises(ImageReadError, match="MINISR_MAX_PIXELS='many'"):
        read_image(small)


def test_raised_limit_lets_a_large_image_through(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    Image.fromarray(np.full((300, 400), 7, np.uint8)).save(big)
    monkeypatch.setenv("MINISR_MAX_PIXELS", "100000")
    with pytest.raises(ImageTooLargeError):
        read_image(big)
    monkeypatch.setenv("MINISR_MAX_PIXELS", "120000")
    assert read_image(big).shape == (300, 400)


def test_cmyk_and_palette_keep_their_colours(tmp_path, rng):
    rgb = rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    expected = np.asarray(Image.fromarray(rgb).convert("CMYK").convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "cmyk.tif"), expected)  # was read as RGB + "alpha" = K
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_image(tmp_path / "pal.png"), np.asarray(pal.convert("RGB")))


@pytest.mark.parametrize("arr,words", [
    (np.array([[np.nan, 0.5]]), "1 NaN"),
    (np.array([[np.inf, -np.inf]], np.float32), "2 infinite"),
    (np.array([[-0.5, 1.0]]), "from -0.5 to 1"),
    (np.array([[0.0, 256.0]]), "from 0 to 256"),
    (np.array([[-1, 5]], np.int16), "from -1 to 5"),
    (np.array([[0, 70000]], np.int32), "from 0 to 70000"),
    (np.zeros((0, 4, 3), np.uint8), "empty image (4x0"),
    (np.zeros((3, 4, 5), np.uint8), "not a greyscale or RGB image"),
    (np.zeros((3, 4), np.complex64), "unsupported pixel type"),
])
def test_invalid_values_are_refused(arr, words):
    with pytest.raises(ImageReadError, match=words.replace("(", r"\(")):
        to_uint8_image(arr, name="x.tif")


def test_valid_values_convert():
    np.testing.assert_array_equal(to_uint8_image(np.array([[0.0, 0.5, 1.0]])), [[0, 128, 255]])
    np.testing.assert_array_equal(to_uint8_image(np.array([[0.0, 127.4, 255.0]])), [[0, 127, 255]])
    np.testing.assert_array_equal(to_uint8_image(np.array([[0, 257, 65535]], np.uint16)), [[0, 1, 255]])
    np.testing.assert_array_equal(to_uint8_image(np.array([[True, False]])), [[255, 0]])


@pytest.mark.parametrize("content,words", [
    (b"", "empty file"), (b"%PDF-1.7\n", "PDF"), (b"\x1f\x8b\x08\x00", "gzip"), (b"\x93NUMPY\x01\x00", ".npy"),
    (b"\x00\x00\x00\x18ftypmp42", "MP4"), (b'{"a": 1}', "JSON"), ("caf\u00e9 au lait".encode(), "text"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "damaged or truncated PNG"),
])
def test_describe_file(tmp_path, content, words):
    path = tmp_path / "f.png"
    path.write_bytes(content)
    assert words in describe_file(path)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert words in str(info.value) and "pip install" not in str(info.value)


def test_a_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageReadError, match="it is a folder"):
        read_image(tmp_path)
