"""MNIST-style IDX files (MNIST, Fashion-MNIST, KMNIST...), gzip-compressed or raw.

IDX layout (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number ``0x00 0x00 TYPE NDIM``,
then NDIM big-endian uint32 dimension sizes, then the values, big-endian, row-major. Images are
``idx3`` (N, rows, cols) uint8, labels ``idx1`` (N,) uint8.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from .. import storage
from .base import Prepared, SourceError, make_id, read_raw
from .registry import register_source

# IDX type byte -> big-endian numpy dtype
IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# File name stems per split: the standard names, plus the "train-images.idx3-ubyte" variant some
# mirrors use. Each may carry a .gz suffix.
SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Array of an IDX file's bytes (already decompressed). Validates the magic number, the type,
    the dimensions and that the payload has exactly the announced size."""
    if len(data) < 4:
        raise SourceError(f"{name}: {len(data)} bytes, too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise SourceError(f"{name}: not an IDX file (magic number {data[:4].hex()} must start with 0000)")
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_TYPES:
        valid = ", ".join(f"0x{t:02x}" for t in IDX_TYPES)
        raise SourceError(f"{name}: unknown IDX data type 0x{type_code:02x} (valid: {valid})")
    if ndim < 1:
        raise SourceError(f"{name}: IDX header announces {ndim} dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise SourceError(f"{name}: truncated IDX header ({len(data)} bytes, need {header} for {ndim} dims)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise SourceError(f"{name}: truncated: header says {dims} x {dtype.itemsize} bytes = {expected} bytes "
                          f"of data, file has {got}")
    if got > expected:
        raise SourceError(f"{name}: {got - expected} unexpected trailing bytes after {dims} values")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def read_idx(path: str) -> np.ndarray:
    """Array of an IDX file, gzip-compressed (detected by its magic bytes, not its name) or raw."""
    data = read_raw(path)
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise SourceError(f"{path}: corrupt or truncated gzip file: {e}") from None
    return parse_idx(data, path)


def find_split_files(input_dir: str, split: str) -> tuple[str, str]:
    """(images path, labels path) of a split in ``input_dir``; raw preferred over .gz when both exist."""
    prefix = SPLIT_PREFIX[split]
    found = []
    for kind, idx_n in (("images", 3), ("labels", 1)):
        names = [f"{prefix}-{kind}-idx{idx_n}-ubyte", f"{prefix}-{kind}.idx{idx_n}-ubyte"]
        candidates = [storage.join(input_dir, n + ext) for n in names for ext in ("", ".gz")]
        hit = next((c for c in candidates if storage.exists(c)), None)
        if hit is None:
            raise SourceError(f"no {split} {kind} file in {input_dir}: looked for "
                              f"{', '.join(os.path.basename(c) for c in candidates)}")
        found.append(hit)
    return found[0], found[1]


def load_split(input_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W) uint8, labels (N,) int64) of one split, with shape/count checks."""
    img_path, lab_path = find_split_files(input_dir, split)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise SourceError(f"{img_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise SourceError(f"{lab_path}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise SourceError(f"{split}: {len(images)} images in {img_path} but {len(labels)} labels in {lab_path}")
    return images, labels.astype(np.int64)


def iter_arrays(images: np.ndarray, labels: np.ndarray, split: str, dataset: str, limit: int | None = None):
    n = len(images) if limit is None else min(limit, len(images))
    for i in range(n):
        yield make_id(dataset, split, i), images[i], int(labels[i])


def prepare(input_dir: str, dataset: str | None = None, limit: int | None = None) -> Prepared:
    """Train and test records of an IDX directory. Both splits are read and checked up front
    (names, headers, counts; 70,000 MNIST images are 55 MB), so a bad directory fails before any
    shard is written."""
    dataset = dataset or os.path.basename(str(input_dir).rstrip("/")) or "idx"
    loaded = {s: load_split(input_dir, s) for s in SPLIT_PREFIX}
    return Prepared(dataset=dataset, source=f"idx:{input_dir}",
                    splits={s: iter_arrays(*loaded[s], s, dataset, limit) for s in SPLIT_PREFIX})


@register_source("idx", "MNIST/Fashion-MNIST IDX files (.gz or raw) in --input")
def open_idx(cfg, opts=None) -> Prepared:
    if not cfg.input:
        raise SourceError("--source idx needs --input DIR with train-images-idx3-ubyte[.gz], ...")
    return prepare(cfg.input, dataset=cfg.name or None, limit=cfg.limit)
