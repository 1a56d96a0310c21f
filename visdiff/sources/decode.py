"""Robust image decoding: any common file in, an 8-bit RGB PIL image out, or a typed error.

One bad file among thousands must cost one row, not the run, so every failure becomes an
`ImageDecodeError` with a short machine-friendly `reason` the pipeline stores per row. PIL's
global settings (MAX_IMAGE_PIXELS, LOAD_TRUNCATED_IMAGES) are never changed: other code in the
same worker may rely on them.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from visdiff.errors import first_line
from visdiff.io import storage

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default limit
MIN_SIDE = 2

REASONS = (
    "empty",
    "not_an_image",
    "truncated",
    "corrupt",
    "decompression_bomb",
    "unsupported_mode",
    "too_small",
    "read_error",
)


class ImageDecodeError(Exception):
    """An image that cannot be used; `reason` is one of REASONS, `detail` says more."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only, turning PIL's bomb guard into our reason."""
    try:
        with warnings.catch_warnings():
            # PIL warns above its limit; our own check below (against max_pixels) decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("decompression_bomb", first_line(exc)) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not_an_image", "no known image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        # Header recognised but unparsable (e.g. cut inside the header).
        raise ImageDecodeError("not_an_image", first_line(exc)) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            "decompression_bomb", f"{width}x{height} = {width * height} pixels > {max_pixels}"
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageDecodeError("too_small", f"{width}x{height}")
    return image


def _load(image: Image.Image) -> None:
    """Force the full decode so truncated or corrupt data fails here, not in a model stage."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("decompression_bomb", first_line(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        detail = first_line(exc)
        lowered = detail.lower()
        truncated = isinstance(exc, EOFError) or any(
            word in lowered for word in ("truncated", "broken data stream", "premature", "eof")
        )
        raise ImageDecodeError("truncated" if truncated else "corrupt", detail) from None


def _on_white(image: Image.Image) -> Image.Image:
    """Composite an image with alpha over white (transparent areas read as background)."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grey_array_to_rgb(values: np.ndarray) -> Image.Image:
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) greyscale: scale the 0..65535 range, never clip it."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "I" and (values.min() < 0 or values.max() > 65535):
        low, high = float(values.min()), float(values.max())  # not a 16-bit range: stretch
        return _grey_array_to_rgb((values - low) * (255.0 / max(high - low, 1.0)))
    return _grey_array_to_rgb(values * (255.0 / 65535.0))


def _float_to_rgb(image: Image.Image) -> Image.Image:
    """Float greyscale: [0, 1] scaled, [0, 255] kept, anything else stretched to its range."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return _grey_array_to_rgb(values * 255.0)
    if low >= 0.0 and high <= 255.0:
        return _grey_array_to_rgb(values)
    return _grey_array_to_rgb((values - low) * (255.0 / max(high - low, 1e-12)))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB; alpha and transparency are composited on white."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit_to_rgb(image)
    if mode == "F":
        return _float_to_rgb(image)
    palette_alpha = mode == "P" and image.palette is not None and image.palette.mode == "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info or palette_alpha:
        if mode in ("RGBa", "La"):  # premultiplied alpha: un-premultiply first
            image = image.convert("RGBA" if mode == "RGBa" else "LA")
        return _on_white(image)
    try:  # L, 1, P, CMYK, YCbCr, HSV, ...
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageDecodeError("unsupported_mode", f"mode {mode}: {first_line(exc)}") from None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode encoded bytes to an upright 8-bit RGB image; raises ImageDecodeError."""
    if not data:
        raise ImageDecodeError("empty", "0 bytes")
    image = _open(data, max_pixels)
    _load(image)
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject a decodable image
        pass
    return to_rgb(image)


def read_and_decode(uri: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read a local path or URI and decode it; read failures give reason "read_error"."""
    try:
        data = storage.read_bytes(uri)
    except (OSError, ValueError) as exc:  # ValueError covers pyarrow's ArrowInvalid
        raise ImageDecodeError("read_error", f"{uri}: {first_line(exc)}") from None
    return decode_image(data, max_pixels=max_pixels)


def thumbnail_jpeg(image: Image.Image, *, size: int = 128, quality: int = 85) -> bytes:
    """A small JPEG (longest side <= size) for the HTML report."""
    thumb = to_rgb(image).copy()
    thumb.thumbnail((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=quality)
    return out.getvalue()
