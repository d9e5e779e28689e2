"""The image bytes of a shard row (and of image files): PNG encode and decode, the PNG header read
without decoding, and uint8/uint16 <-> float32 pixels. Used as ``shards.NAME`` (:mod:`dae.shards`
imports these names).

    encode_png(uint16 (H, W, 3) array)   -> 16-bit RGB PNG bytes (imagecodecs), lossless
    decode_png(bytes)                    -> (H, W, C) uint8/uint16, alpha dropped
    png_header(bytes)                    -> (height, width, channels, bit depth) from 33 bytes

Rules:
- 16-bit stays 16-bit. Pillow opens a 16-bit RGB(A) PNG or TIFF as 8-bit RGB, silently, and writes no
  16-bit RGB PNG: so 16-bit color PNGs are encoded and decoded by imagecodecs (libpng), 16-bit RGB
  TIFFs are decoded by tifffile (:func:`decode_wide`); everything else goes through Pillow.
- A decompression bomb is refused from the header, before any pixel is decoded.
No Ray import.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image

# Images above this many pixels are refused (bombs: a tiny PNG can claim 100000^2 pixels, 10 GB decoded).
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024


class ImageDecodeError(ValueError):
    pass


# ---------------------------------------------------------------- PNG encode / decode


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an (H, W), (H, W, 1) or (H, W, 3) uint8 or uint16 array.

    compress_level 1: PNG is lossless at any level; level 1 encodes ~5x faster than the default 6
    for files ~10% larger, the right trade for throughput-bound jobs.
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"images must be uint8 or uint16, got {a.dtype}")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"expected (H, W), (H, W, 1) or (H, W, 3) image, got shape {a.shape}")
    if a.ndim == 3 and a.dtype == np.uint16:  # Pillow has no 16-bit RGB
        import imagecodecs

        return bytes(imagecodecs.png_encode(np.ascontiguousarray(a), level=compress_level))
    img = Image.fromarray(a)  # L, RGB, or I;16 (stored as a 16-bit gray PNG)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Encoded image bytes (PNG, or anything Pillow reads) -> a loaded PIL image. Raises
    ImageDecodeError for undecodable bytes, empty images and oversized ones (checked from the header,
    before any pixel is decoded)."""
    if data is None or len(data) == 0:
        raise ImageDecodeError("empty image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            check_pixels(*img.size, max_pixels)
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"decompression bomb refused: {e}") from None
    except Exception as e:  # PIL raises many types for corrupt data; it names the in-memory file: "<file>"
        text = re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>", "<file>", str(e))  # the same reason every run
        raise ImageDecodeError(f"undecodable image: {type(e).__name__}: {text}") from None
    return img


def decode_png(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W, C) uint8 or uint16 array from encoded image bytes: :func:`decode_wide` for 16-bit color,
    else :func:`open_image` (and its errors), then :func:`image_to_array` (ImageDecodeError for
    unsupported modes)."""
    a = decode_wide(data, max_pixels)
    if a is not None:
        return a
    return image_to_array(open_image(data, max_pixels))


TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


def decode_wide(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """(H, W, C) uint16 array of a 16-bit color PNG (RGB, RGBA: 3 channels; gray + alpha: 1) or a
    16-bit RGB(A) TIFF, alpha dropped; None for any other bytes (Pillow decodes those right).
    The pixel limit is checked from the header first; ImageDecodeError for a broken image."""
    head = bytes(data[:33]) if data is not None else b""
    if head[:8] == PNG_SIGNATURE:
        try:
            h, w, c, depth = png_header(data)
        except ImageDecodeError:  # a broken PNG: Pillow gives the reason, as for any other
            return None
        if depth != 16 or head[25] == 0:  # 16-bit gray: Pillow's I;16 is right
            return None
        check_pixels(w, h, max_pixels)
        import imagecodecs

        try:
            a = imagecodecs.png_decode(bytes(data))
        except Exception as e:  # noqa: BLE001 - libpng's reasons come as several types
            raise ImageDecodeError(f"undecodable image: {type(e).__name__}: {e}") from None
        return _drop_alpha(a, c)
    if head[:4] in TIFF_SIGNATURES:
        import tifffile

        try:
            with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
                page = tif.pages.first
                rgb16 = page.dtype == np.uint16 and page.photometric == 2 and page.samplesperpixel >= 3
                if not rgb16:
                    return None
                check_pixels(page.imagewidth, page.imagelength, max_pixels)
                a = page.asarray()
                separate = page.planarconfig == 2
        except ImageDecodeError:
            raise
        except Exception:  # noqa: BLE001 - a TIFF tifffile cannot parse: Pillow gives the reason
            return None
        if separate and a.ndim == 3:
            a = np.moveaxis(a, 0, -1)
        return _drop_alpha(a, 3)
    return None


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """ImageDecodeError for an empty image or one over ``max_pixels`` (a decompression bomb?)."""
    if width == 0 or height == 0:
        raise ImageDecodeError(f"empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(f"image of {width}x{height} = {width * height} pixels exceeds the limit of "
                               f"{max_pixels} (decompression bomb?)")


def _drop_alpha(a: np.ndarray, channels: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.uint16)
    if a.ndim == 2:
        a = a[:, :, None]
    return np.ascontiguousarray(a[:, :, :channels])


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (bit depth, PNG color type) -> channels of decode_png's array: every valid pair. decode_png drops alpha
# (gray + alpha -> gray, RGBA -> RGB) and makes palette images RGB, with or without transparency.
PNG_CHANNELS = {(1, 0): 1, (2, 0): 1, (4, 0): 1, (8, 0): 1, (16, 0): 1, (8, 2): 3, (16, 2): 3, (1, 3): 3,
                (2, 3): 3, (4, 3): 3, (8, 3): 3, (8, 4): 1, (16, 4): 1, (8, 6): 3, (16, 6): 3}


def png_header(data: bytes) -> tuple[int, int, int, int]:
    """(height, width, channels, bit depth) of PNG bytes, from the signature and IHDR chunk alone
    (the first 33 bytes, nothing decoded). ``channels`` is what :func:`decode_png` returns for the
    image (:data:`PNG_CHANNELS`): 1 for gray and gray + alpha, 3 for RGB, RGBA and palette. Raises
    ImageDecodeError for bytes that are not a PNG or whose header is truncated or invalid."""
    import zlib

    head = bytes(data[:33]) if data is not None else b""
    if not head:
        raise ImageDecodeError("empty image bytes")
    if head[:8] != PNG_SIGNATURE and not (len(head) < 8 and PNG_SIGNATURE.startswith(head)):
        raise ImageDecodeError("not a PNG (no PNG signature)")
    if len(head) < 33:
        raise ImageDecodeError(f"truncated PNG header ({len(head)} bytes, IHDR needs 33)")
    if head[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise ImageDecodeError("invalid PNG header: the first chunk is not a 13-byte IHDR")
    if zlib.crc32(head[12:29]) != int.from_bytes(head[29:33], "big"):
        raise ImageDecodeError("invalid PNG header: bad IHDR checksum")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    depth, color = head[24], head[25]
    channels = PNG_CHANNELS.get((depth, color))
    if channels is None:
        raise ImageDecodeError(f"invalid PNG header: bit depth {depth} with color type {color}")
    if width == 0 or height == 0:
        raise ImageDecodeError(f"empty image ({width}x{height})")
    return height, width, channels, depth


def image_to_array(img: Image.Image) -> np.ndarray:
    """(H, W, C) uint8/uint16 array of a Pillow image: gray stays 1 channel, 16-bit gray stays
    16-bit, RGBA/LA drop alpha, palette and CMYK become RGB."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(img, dtype=np.uint16)
    elif mode == "I":  # 32-bit int gray; Pillow opens 16-bit PNGs this way too
        a = np.asarray(img)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageDecodeError(f"32-bit integer image with values outside 16-bit range ({a.min()}..{a.max()})")
        a = a.astype(np.uint16)
    elif mode == "1":
        a = np.asarray(img.convert("L"))
    elif mode == "L":
        a = np.asarray(img)
    elif mode == "LA":
        a = np.asarray(img.convert("L"))
    elif mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        a = np.asarray(img.convert("RGB"))
    else:
        raise ImageDecodeError(f"unsupported image mode {mode!r}")
    if a.ndim == 2:
        a = a[:, :, None]
    return np.ascontiguousarray(a)


def to_float(a: np.ndarray) -> np.ndarray:
    """uint8/uint16 (H, W, C) -> float32 in [0, 1]."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) * np.float32(1 / 255)
    if a.dtype == np.uint16:
        return a.astype(np.float32) * np.float32(1 / 65535)
    return np.asarray(a, dtype=np.float32)


def from_float(a: np.ndarray, dtype=np.uint8) -> np.ndarray:
    """float [0, 1] -> uint8/uint16, rounded to nearest."""
    peak = 255 if np.dtype(dtype) == np.uint8 else 65535
    return np.clip(np.rint(np.asarray(a, dtype=np.float32) * peak), 0, peak).astype(dtype)
