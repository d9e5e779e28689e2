"""Image files as the denoise stage reads and exports them: names, decoding, export paths, atomic writes.

    is_image_name("cats/IMG_1.JPG")                -> True  (by extension, case-insensitive)
    decode_image(data)                             -> (H, W, C) uint8/uint16, EXIF orientation applied
    export_relpath("cats/IMG_1.JPG", "png")        -> "cats/IMG_1.png"
    export_target("/exp", "cats/IMG_1.png")        -> "/exp/cats/IMG_1.png", or ValueError if it would
                                                      land outside /exp
    encode_export(png, "cats/IMG_1.JPG", "same", 90) -> JPEG bytes at quality 90

Rules:
- Formats: PNG, JPEG, TIFF, BMP, and WebP where this Pillow reads it (:data:`EXTENSIONS`).
- Decoding is :func:`dae.shards.image_to_array` after ``ImageOps.exif_transpose``: phone photos come
  upright, gray stays 1 channel, alpha is dropped. 16-bit stays 16-bit: 16-bit color PNGs and TIFFs,
  which Pillow would make 8-bit, are decoded by :func:`dae.codec.decode_wide` and turned upright by
  :func:`orient` with the EXIF orientation Pillow reads from the header. The decompression-bomb guard
  is checked from the header, before any pixel is decoded (as :func:`dae.shards.decode_png`).
- An id is a relative path as listed; an export path is that id under the export folder, and a path
  that would land outside it (``..``, absolute, a symlinked folder pointing elsewhere) is refused.
- Export writes are whole or absent: a temporary file in the same folder, fsynced, then linked (a new
  file: never replaces one that appeared meanwhile) or renamed over our own earlier file; on S3 one PUT.
No Ray import.
"""

from __future__ import annotations

import io
import os
import posixpath
import uuid

import numpy as np
from PIL import Image, ImageOps, features

from . import shards, storage
from .shards import ImageDecodeError

# What the decode of an image file does to its pixels: in the denoise manifest (a change redoes outputs).
DECODE = "pillow+exif_transpose/2"  # 2: 16-bit color kept 16-bit
_WEBP = (".webp",) if features.check("webp") else ()
EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", *_WEBP)
# --export-format same: the Pillow format of each extension
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
           ".webp": "WEBP"}
EXPORT_FORMATS = ("png", "same")


def is_image_name(rel: str) -> bool:
    return str(rel).lower().endswith(EXTENSIONS)


def decode_image(data: bytes, max_pixels: int = shards.DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W, C) uint8 or uint16 array of an image file's bytes, upright (EXIF orientation applied).
    Raises ImageDecodeError for empty, undecodable or oversized images (a bomb is refused from its
    header) and unsupported modes."""
    if data is None or len(data) == 0:
        raise ImageDecodeError("empty file")
    a = shards.decode_wide(data, max_pixels)
    if a is not None:
        return orient(a, exif_orientation(data))
    img = shards.open_image(data, max_pixels)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block costs the orientation, not the image
        pass
    return shards.image_to_array(img)


ORIENTATION = 0x0112  # the EXIF tag


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of an image file's bytes, 1 when it has none or it cannot be read.
    Pillow reads it from the header without decoding pixels."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            value = int(img.getexif().get(ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - as in decode_image: a broken EXIF block costs the orientation
        return 1
    return value if 1 <= value <= 8 else 1


# EXIF orientation -> the numpy steps that make an (H, W, C) array upright: ImageOps.exif_transpose's
# transposes (2 flip left-right, 3 rotate 180, 4 flip top-bottom, 5 transpose, 6 rotate 270, 7 transverse,
# 8 rotate 90), written for arrays Pillow cannot hold (16-bit color).
_ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) array ``a`` made upright for its EXIF ``orientation``, as ImageOps.exif_transpose does."""
    return np.ascontiguousarray(_ORIENT[orientation](a))


# ---------------------------------------------------------------- export paths


def check_relpath(rel: str) -> str:
    """``rel`` if it is a plain relative path ('/'-separated, no '', '.' or '..' part, no backslash or
    NUL, not absolute), else ValueError: such an id cannot be mirrored under a folder safely."""
    rel = str(rel)
    if not rel or rel.startswith("/") or "\\" in rel or "\0" in rel or (len(rel) > 1 and rel[1] == ":"):
        raise ValueError(f"{rel!r} is not a plain relative path")
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise ValueError(f"{rel!r} has an empty, '.' or '..' part")
    return rel


def export_relpath(rel: str, fmt: str) -> str:
    """Where the denoised image of input ``rel`` goes under the export folder: ``png``: the same path
    with its extension replaced by .png (kept when it is already .png, in any case); ``same``: ``rel``."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")
    rel = check_relpath(rel)
    if fmt == "same":
        return rel
    root, ext = posixpath.splitext(rel)
    if ext.lower() == ".png":
        return rel
    return (root if ext.lower() in EXTENSIONS else rel) + ".png"


def export_target(export_dir: str, rel: str) -> str:
    """The path (or URI) of ``rel`` under ``export_dir``; ValueError when it would land outside it.
    Locally the real paths are compared, so a symlinked folder inside ``export_dir`` that points
    elsewhere is refused too."""
    rel = check_relpath(rel)
    target = storage.join(export_dir, *rel.split("/"))
    if storage.is_uri(export_dir):
        return target
    base = os.path.realpath(export_dir)
    real = os.path.realpath(target)
    if os.path.commonpath([base, real]) != base or real == base:
        raise ValueError(f"{rel!r} would be written outside the export folder (as {real})")
    return target


# ---------------------------------------------------------------- export encoding and writes


def encode_export(png: bytes, rel: str, fmt: str, quality: int = 95) -> bytes:
    """The bytes of the exported file of input ``rel`` from its denoised PNG: the PNG itself for
    ``png``; for ``same``, the input's format by extension (JPEG and WebP at ``quality``; 16-bit kept
    in TIFF and PNG, made 8-bit for the formats that have none)."""
    if fmt == "png":
        return bytes(png)
    ext = posixpath.splitext(str(rel))[1].lower()
    name = FORMATS.get(ext)
    if name is None:
        raise ValueError(f"{rel!r}: no export format for extension {ext!r}")
    if name == "PNG":
        return bytes(png)
    a = shards.decode_png(bytes(png))
    buf = io.BytesIO()
    if a.dtype == np.uint16 and name == "TIFF" and a.shape[2] == 3:  # Pillow has no 16-bit RGB
        import tifffile

        tifffile.imwrite(buf, a, photometric="rgb", compression="zlib")
        return buf.getvalue()
    if a.dtype == np.uint16 and name != "TIFF":
        a = np.rint(a.astype(np.float32) / 257).astype(np.uint8)  # 16 -> 8 bit, nearest
    img = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
    kw = {"quality": int(quality)} if name in ("JPEG", "WEBP") else {}
    img.save(buf, format=name, **kw)
    return buf.getvalue()


def write_new(path: str, data: bytes, replace: bool) -> None:
    """Write a whole file at ``path``. ``replace`` False: only if nothing is there (FileExistsError
    otherwise, even when a file appears while this runs: the final step is a hard link, which fails
    on an existing name); True: rename over whatever is there. Either way a reader (and a kill)
    sees the old state or the whole new file. S3: one PUT (replace is checked by the caller)."""
    if storage.is_uri(path):
        storage.write_bytes(path, data)
        return
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
