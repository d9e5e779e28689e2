"""CIFAR-10, binary version (``cifar-10-binary.tar.gz``; never the pickled python version).

Files ``data_batch_1.bin`` .. ``data_batch_5.bin`` (train) and ``test_batch.bin`` (test), in the
input directory or its ``cifar-10-batches-bin/`` sub-folder. Each record is 3073 bytes: one label
byte (0..9), then the 32x32 red plane, green plane and blue plane, each row-major.
"""

from __future__ import annotations

import numpy as np

from .. import storage
from .base import Prepared, SourceError, make_id, read_raw
from .registry import register_source

RECORD = 1 + 3 * 32 * 32
FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SUBDIR = "cifar-10-batches-bin"


def parse_batch(data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, 3) uint8, labels (N,) int64) of one binary batch file's bytes."""
    if len(data) == 0 or len(data) % RECORD:
        raise SourceError(f"{name}: size {len(data)} bytes is not a positive multiple of the "
                          f"{RECORD}-byte CIFAR-10 record (truncated, or not the binary version?)")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise SourceError(f"{name}: label byte {labels.max()} out of range 0..9 (CIFAR-100 file?)")
    # (N, 3 planes, 32 rows, 32 cols) -> (N, 32, 32, RGB)
    images = np.ascontiguousarray(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def find_dir(input_dir: str) -> str:
    for d in (input_dir, storage.join(input_dir, SUBDIR)):
        if storage.exists(storage.join(d, FILES["test"][0])):
            return d
    raise SourceError(f"no CIFAR-10 binary files in {input_dir} or {storage.join(input_dir, SUBDIR)}: "
                      f"expected {', '.join(FILES['train'] + FILES['test'])} (the binary version; "
                      "the pickled python version is not read)")


def iter_split(d: str, split: str, dataset: str, limit: int | None):
    i = 0
    for fname in FILES[split]:
        path = storage.join(d, fname)
        images, labels = parse_batch(read_raw(path), path)
        for img, lab in zip(images, labels):
            if limit is not None and i >= limit:
                return
            yield make_id(dataset, split, i), img, int(lab)
            i += 1


def prepare(input_dir: str, dataset: str = "cifar10", limit: int | None = None) -> Prepared:
    d = find_dir(input_dir)
    for names in FILES.values():
        for n in names:
            p = storage.join(d, n)
            if not storage.exists(p):
                raise SourceError(f"missing CIFAR-10 file {p}")
            size = storage.resolve(p)[0].get_file_info(storage.resolve(p)[1]).size
            if size == 0 or size % RECORD:
                raise SourceError(f"{p}: size {size} bytes is not a positive multiple of {RECORD} "
                                  "(truncated, or not the binary version?)")
    return Prepared(dataset=dataset, source=f"cifar10-binary:{d}", classes=list(CLASSES),
                    splits={s: iter_split(d, s, dataset, limit) for s in FILES})


@register_source("cifar10", "CIFAR-10 binary version (data_batch_N.bin, test_batch.bin) in --input")
def open_cifar10(cfg, opts=None) -> Prepared:
    if not cfg.input:
        raise SourceError("--source cifar10 needs --input DIR with data_batch_1.bin .. test_batch.bin")
    return prepare(cfg.input, dataset=cfg.name or "cifar10", limit=cfg.limit)
