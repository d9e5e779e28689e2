"""SVHN "format 2" cropped digits: ``train_32x32.mat`` and ``test_32x32.mat`` (MATLAB v5 files).

Each file holds ``X`` of shape (32, 32, 3, N) uint8 (height, width, RGB, image) and ``y`` of shape
(N, 1) with labels 1..10, where 10 stands for the digit 0 (http://ufldl.stanford.edu/housenumbers/).
"""

from __future__ import annotations

import io

import numpy as np

from .. import storage
from .base import Prepared, SourceError, make_id, read_raw
from .registry import register_source

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def load_mat(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, 3) uint8, labels (N,) int64 with 10 mapped to 0) of one .mat file."""
    import scipy.io

    src = path if not storage.is_uri(path) else io.BytesIO(read_raw(path))
    try:
        mat = scipy.io.loadmat(src)
    except Exception as e:  # scipy raises ValueError/TypeError/... on bad files
        raise SourceError(f"{path}: not a readable MATLAB .mat file: {type(e).__name__}: {e}") from None
    for key in ("X", "y"):
        if key not in mat:
            keys = sorted(k for k in mat if not k.startswith("__"))
            raise SourceError(f"{path}: no variable {key!r} (variables: {', '.join(keys)}); "
                              "expected SVHN format 2 (X: 32x32x3xN, y: Nx1)")
    X, y = mat["X"], np.asarray(mat["y"])
    if X.ndim != 4 or X.shape[2] != 3 or X.dtype != np.uint8:
        raise SourceError(f"{path}: X must be uint8 of shape (H, W, 3, N), got {X.dtype} {X.shape}")
    n = X.shape[3]
    if y.size != n or (y.ndim == 2 and y.shape[1] != 1) or y.ndim > 2:
        raise SourceError(f"{path}: y must have shape ({n}, 1) to match X's {n} images, got {y.shape}")
    labels = y.reshape(-1).astype(np.int64)
    bad = (labels < 0) | (labels > 10)
    if bad.any():
        raise SourceError(f"{path}: labels must be 1..10 (10 = digit 0), found {sorted(set(labels[bad]))[:5]}")
    labels[labels == 10] = 0
    # (H, W, 3, N) -> (N, H, W, 3); contiguous so each image encodes without a strided copy.
    images = np.ascontiguousarray(np.transpose(X, (3, 0, 1, 2)))
    return images, labels


def iter_split(images: np.ndarray, labels: np.ndarray, split: str, dataset: str, limit: int | None):
    n = len(images) if limit is None else min(limit, len(images))
    for i in range(n):
        yield make_id(dataset, split, i), images[i], int(labels[i])


def prepare(input_dir: str, dataset: str = "svhn", limit: int | None = None) -> Prepared:
    paths = {s: storage.join(input_dir, f) for s, f in FILES.items()}
    missing = [p for p in paths.values() if not storage.exists(p)]
    if missing:
        raise SourceError(f"missing SVHN file(s): {', '.join(missing)} (format 2 files from "
                          "http://ufldl.stanford.edu/housenumbers/)")
    loaded = {s: load_mat(p) for s, p in paths.items()}
    return Prepared(dataset=dataset, source=f"svhn:{input_dir}",
                    splits={s: iter_split(*loaded[s], s, dataset, limit) for s in FILES})


@register_source("svhn", "SVHN format 2 train_32x32.mat / test_32x32.mat in --input")
def open_svhn(cfg, opts=None) -> Prepared:
    if not cfg.input:
        raise SourceError("--source svhn needs --input DIR with train_32x32.mat and test_32x32.mat")
    return prepare(cfg.input, dataset=cfg.name or "svhn", limit=cfg.limit)
