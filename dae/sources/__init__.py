"""Image sources for the prepare stage (:mod:`dae.prepare`): real datasets and image folders, as
train/test records.

Every source turns its input into a :class:`Prepared` (:mod:`dae.sources.base`: the dataset name, where
it came from, one lazy iterable of ``(id, image, label)`` records per split). Each source module holds
its reader (plain keyword arguments, testable on its own), its options (a frozen dataclass: the flags
of jobs.prepare that belong to it) and its entry in the registry (:mod:`dae.sources.registry`,
``@register_source``: name -> opener, options, help, the folders it reads):

    idx            MNIST / Fashion-MNIST IDX files (.gz or raw)          dae.sources.idx
    svhn           SVHN format 2 .mat files                                dae.sources.svhn
    cifar10        CIFAR-10 binary version (.bin)                          dae.sources.cifar
    folder         image folder (PNG/JPEG/TIFF/BMP), Ray Data in parallel   dae.sources.folder    FolderOptions
    natural        the denoising benchmark sets (Train400, BSD68, ...)      dae.sources.natural   NaturalOptions
    torchvision    torchvision datasets (MNIST, FashionMNIST, SVHN, CIFAR10) dae.sources.tv       TorchvisionOptions
    mnist5k, fashion-mnist, sklearn-digits, photos: offline, no download   dae.sources.offline   PhotosOptions

Importing this package registers them all, in the order below (``--source``'s choices). The modules'
heavy imports (torchvision, scipy, scikit-learn, Ray) stay inside the functions that need them, so
that ``--source idx`` never imports them.
"""

from __future__ import annotations

from .base import SPLITS, Encoded, Image, Prepared, Record, SourceError, hash_unit, is_test, make_id, read_raw

# The sources register on import: this order is the registry's (--source's choices).
# isort: off
from . import idx, svhn, cifar, folder, natural, tv, offline
# isort: on
from .folder import FolderOptions
from .natural import NaturalOptions
from .offline import PhotosOptions
from .registry import (
    SOURCES,
    Source,
    get_source,
    input_dirs,
    list_sources,
    open_source,
    register_source,
    source_options,
)
from .tv import TORCHVISION_ROOT, TorchvisionOptions

__all__ = [
    "SPLITS", "Encoded", "Image", "Prepared", "Record", "SourceError", "hash_unit", "is_test", "make_id", "read_raw",
    "idx", "svhn", "cifar", "folder", "natural", "tv", "offline",
    "FolderOptions", "NaturalOptions", "PhotosOptions", "TorchvisionOptions", "TORCHVISION_ROOT",
    "SOURCES", "Source", "get_source", "input_dirs", "list_sources", "open_source", "register_source",
    "source_options",
]
