"""torchvision datasets as a source: MNIST, FashionMNIST, SVHN, CIFAR10.

With ``download=True`` torchvision fetches the files into ``root`` (machines with internet).
Without it, the files must already be in ``root`` in torchvision's own layout (torchvision 0.29):

    MNIST         ROOT/MNIST/raw/train-images-idx3-ubyte, train-labels-idx1-ubyte,
                  t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte   (uncompressed IDX; no checksum)
    FashionMNIST  ROOT/FashionMNIST/raw/... (same four names)
    SVHN          ROOT/train_32x32.mat, ROOT/test_32x32.mat         (MD5-checked by torchvision)
    CIFAR10       ROOT/cifar-10-batches-py/ (torchvision's pickled batches, MD5-checked by
                  torchvision before it unpickles them; the `cifar10` source reads the binary
                  version without torchvision)

``--source torchvision`` takes :class:`TorchvisionOptions`; without ``--input`` the root is
:data:`TORCHVISION_ROOT`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import shards
from .base import Prepared, SourceError, make_id
from .registry import register_source

TORCHVISION_ROOT = "data/torchvision"  # --source torchvision without --input

# name -> (dataset name used in ids, expected layout for the error message)
DATASETS = {
    "MNIST": ("mnist", "ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "FashionMNIST": ("fashion-mnist", "ROOT/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "SVHN": ("svhn", "ROOT/train_32x32.mat and ROOT/test_32x32.mat (MD5-checked)"),
    "CIFAR10": ("cifar10", "ROOT/cifar-10-batches-py/ (MD5-checked)"),
}


def canonical_name(name: str) -> str:
    by_lower = {k.lower().replace("-", "").replace("_", ""): k for k in DATASETS}
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in by_lower:
        raise ValueError(f"unknown torchvision dataset {name!r}; valid: {', '.join(DATASETS)}")
    return by_lower[key]


def open_dataset(name: str, root: str, split: str, download: bool = False):
    """The torchvision dataset object of one split (no transform: items are (PIL image, label))."""
    import torchvision.datasets as tvd

    name = canonical_name(name)
    cls = getattr(tvd, name)
    try:
        if name == "SVHN":
            return cls(root, split=split, download=download)
        return cls(root, train=(split == "train"), download=download)
    except RuntimeError as e:
        hint = "" if download else " (pass --download on a machine with internet)"
        raise SourceError(f"torchvision {name} {split} not found in {root}: {e}; expected "
                          f"{DATASETS[name][1].replace('ROOT', root)}{hint}") from None


def iter_split(ds, split: str, dataset: str, limit: int | None):
    n = len(ds) if limit is None else min(limit, len(ds))
    for i in range(n):
        img, label = ds[i]
        yield make_id(dataset, split, i), shards.image_to_array(img), int(label)


def prepare(name: str, root: str, download: bool = False, dataset: str | None = None,
            limit: int | None = None) -> Prepared:
    name = canonical_name(name)
    dataset = dataset or DATASETS[name][0]
    splits = {s: open_dataset(name, root, s, download) for s in ("train", "test")}
    classes = getattr(splits["train"], "classes", None)
    return Prepared(dataset=dataset, source=f"torchvision:{name}:{root}",
                    classes=list(classes) if classes else None,
                    splits={s: iter_split(ds, s, dataset, limit) for s, ds in splits.items()})


# ---------------------------------------------------------------- --source torchvision


@dataclass(frozen=True)
class TorchvisionOptions:
    tv_name: str = field(default="MNIST", metadata={"help": "torchvision dataset", "choices": list(DATASETS)})
    download: bool = field(default=False, metadata={"help": "torchvision: download into --input (needs internet)"})


@register_source("torchvision", "torchvision --tv-name dataset in --input root (--download to fetch)",
                 options=TorchvisionOptions, inputs=lambda cfg, opts: [cfg.input or TORCHVISION_ROOT])
def open_torchvision(cfg, opts: TorchvisionOptions) -> Prepared:
    return prepare(opts.tv_name, root=cfg.input or TORCHVISION_ROOT, download=opts.download,
                   dataset=cfg.name or None, limit=cfg.limit)
