"""What every source shares: the record types, the error type, deterministic splits and ids.

A source turns its input into a :class:`Prepared`: the dataset name, where it came from, and one lazy
iterable of records per split. A record is ``(id, image, label)``:

    id     str                 unique and stable, e.g. "fashion-mnist/train/000042" or a relative path
    image  np.ndarray          (H, W), (H, W, 1) or (H, W, 3) uint8 or uint16
           | Encoded           PNG bytes already encoded by a parallel reader (the folder source)
    label  int | None
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple, Union

import numpy as np

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


def parse_pairs(pairs, what: str, valid_values=None) -> dict[str, str]:
    """``("train=Train400", "test=BSD68")`` -> {"train": "Train400", "test": "BSD68"}."""
    out: dict[str, str] = {}
    for p in pairs:
        split, eq, value = str(p).partition("=")
        if not eq or split not in SPLITS or not value:
            raise SourceError(f"{what} {p!r}: expected SPLIT=VALUE with SPLIT one of {', '.join(SPLITS)}")
        if valid_values is not None and value not in valid_values:
            raise SourceError(f"{what} {p!r}: unknown set {value!r}; valid: {', '.join(valid_values)}")
        if split in out:
            raise SourceError(f"{what}: {split} given twice")
        out[split] = value
    return out
