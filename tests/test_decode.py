"""Decoding real image files made with PIL: every mode ends as upright 8-bit RGB, every bad file
as an ImageDecodeError with the right reason, and PIL's global settings stay untouched."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from visdiff.sources.decode import (
    REASONS,
    ImageDecodeError,
    decode_image,
    read_and_decode,
    thumbnail_jpeg,
)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def reason_of(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kwargs)
    assert info.value.reason in REASONS
    assert str(info.value).startswith(info.value.reason)
    return info.value.reason


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit grey) with no pixel data at all."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_rgb_jpeg_keeps_size_and_colour():
    image = Image.new("RGB", (40, 30), (200, 30, 40))
    out = decode_image(encode(image, "JPEG", quality=95))
    assert out.mode == "RGB" and out.size == (40, 30)
    r, g, b = out.getpixel((20, 15))
    assert abs(r - 200) <= 4 and abs(g - 30) <= 4 and abs(b - 40) <= 4


def test_png_alpha_is_composited_on_white():
    image = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    image.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((1, 0), (0, 0, 255, 128))  # half transparent blue
    out = decode_image(encode(image, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((5, 5)) == (255, 0, 0)
    r, g, b = out.getpixel((1, 0))
    assert b == 255 and 120 <= r <= 135 and 120 <= g <= 135


def test_greyscale_and_grey_alpha():
    grey = Image.new("L", (8, 8), 77)
    assert decode_image(encode(grey, "PNG")).getpixel((3, 3)) == (77, 77, 77)
    la = Image.new("LA", (8, 8), (0, 0))  # transparent black
    la.putpixel((1, 1), (10, 255))
    out = decode_image(encode(la, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (10, 10, 10)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data)
    assert out.mode == "RGB"
    r, g, b = out.getpixel((8, 8))
    assert r > 240 and g < 15 and b < 15


def test_palette_with_transparency():
    image = Image.new("P", (6, 6), 1)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * (254 * 3))
    image.putpixel((2, 2), 0)
    data = encode(image, "PNG", transparency=0)
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and "transparency" in opened.info
    out = decode_image(data)
    assert out.getpixel((2, 2)) == (255, 255, 255)  # transparent index -> white, not black
    assert out.getpixel((0, 0)) == (0, 200, 0)
    gif = decode_image(encode(image, "GIF", transparency=0))
    assert gif.getpixel((2, 2)) == (255, 255, 255) and gif.getpixel((4, 4)) == (0, 200, 0)


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 32768, 65535, 257], [1000, 20000, 40000, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(decode_image(data))
    assert out.shape == (2, 4, 3) and out.dtype == np.uint8
    grey = out[..., 0]
    assert (out[..., 1] == grey).all() and (out[..., 2] == grey).all()
    assert grey[0, 0] == 0 and grey[0, 2] == 255 and grey[1, 3] == 255
    assert abs(int(grey[0, 1]) - 128) <= 1
    assert grey[0, 3] == 1  # 257 / 257
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(grey, expected)


def test_float_image_in_unit_range(tmp_path: Path):
    values = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(values).save(path)
    grey = np.asarray(read_and_decode(str(path)))[..., 0]
    assert grey.tolist() == [[0, 128], [255, 64]]


def test_exif_orientation_6_rotates_clockwise():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # left quarter red
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(encode(image, "JPEG", quality=95, exif=exif))
    assert out.size == (20, 40)  # width and height swap
    top = out.getpixel((10, 2))
    bottom = out.getpixel((10, 37))
    assert top[0] > 200 and top[2] < 60  # the stored left edge is now the top
    assert bottom[2] > 200 and bottom[0] < 60


def test_truncated_jpeg():
    data = encode(noise(200, 200), "JPEG", quality=90)
    assert reason_of(data[: len(data) // 2]) == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png():
    data = encode(noise(100, 100), "PNG")
    assert reason_of(data[: len(data) // 2]) == "truncated"


def test_not_images(tmp_path: Path):
    rng = np.random.default_rng(1)
    assert reason_of(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()) == "not_an_image"
    text = tmp_path / "notes.jpg"
    text.write_text("this is a text file, not a photo\n")
    with pytest.raises(ImageDecodeError) as info:
        read_and_decode(str(text))
    assert info.value.reason == "not_an_image"


def test_empty_bytes():
    assert reason_of(b"") == "empty"


def test_too_small():
    assert reason_of(encode(Image.new("RGB", (1, 1)), "PNG")) == "too_small"
    assert reason_of(encode(Image.new("RGB", (50, 1)), "PNG")) == "too_small"
    assert decode_image(encode(Image.new("RGB", (2, 2)), "PNG")).size == (2, 2)


def test_decompression_bomb_without_touching_pil_settings():
    limit_before = Image.MAX_IMAGE_PIXELS
    filters_before = list(warnings.filters)
    # Far above PIL's limit (PIL raises DecompressionBombError while opening).
    assert reason_of(png_header_only(100_000, 100_000)) == "decompression_bomb"
    # Between PIL's warning and error thresholds (PIL only warns).
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any leaked DecompressionBombWarning would raise here
        assert reason_of(png_header_only(10_000, 10_000)) == "decompression_bomb"
    # Our own limit, checked from the header before decoding.
    assert (
        reason_of(encode(Image.new("RGB", (20, 20)), "PNG"), max_pixels=399) == "decompression_bomb"
    )
    assert decode_image(encode(Image.new("RGB", (20, 20)), "PNG"), max_pixels=400).size == (20, 20)
    assert Image.MAX_IMAGE_PIXELS == limit_before
    assert warnings.filters == filters_before


def test_missing_path_is_read_error(tmp_path: Path):
    with pytest.raises(ImageDecodeError) as info:
        read_and_decode(str(tmp_path / "nope.jpg"))
    assert info.value.reason == "read_error"
    assert "nope.jpg" in info.value.detail


@pytest.mark.parametrize("fmt", ["WEBP", "BMP", "TIFF", "GIF", "PNG"])
def test_other_formats_round_trip(fmt: str):
    image = Image.new("RGB", (24, 12), (10, 120, 240))
    out = decode_image(encode(image, fmt))
    assert out.mode == "RGB" and out.size == (24, 12)


def test_shared_photos_decode_and_thumbnail(examples_dir: Path):
    paths = sorted((examples_dir / "set_a").glob("*.jpg"))[:3]
    paths += sorted((examples_dir / "set_b").glob("*.jpg"))[:3]
    for path in paths:
        image = read_and_decode(str(path))
        assert image.mode == "RGB" and min(image.size) >= 2
        thumb = thumbnail_jpeg(image, size=128)
        assert thumb[:2] == b"\xff\xd8"
        small = Image.open(io.BytesIO(thumb))
        assert small.format == "JPEG" and max(small.size) == 128
        ratio_in = image.size[0] / image.size[1]
        ratio_out = small.size[0] / small.size[1]
        assert abs(ratio_in - ratio_out) < 0.05 * max(ratio_in, 1)


def test_thumbnail_of_alpha_image():
    image = Image.new("RGBA", (300, 150), (0, 0, 0, 0))
    small = Image.open(io.BytesIO(thumbnail_jpeg(image, size=64)))
    assert small.size == (64, 32)
    r, g, b = small.getpixel((10, 10))
    assert min(r, g, b) > 245
