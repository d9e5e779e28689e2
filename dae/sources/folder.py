"""A folder of images (recursive): PNG, JPEG, TIFF, BMP; gray, RGB, RGBA; 8-bit or 16-bit.

* ids are the relative paths (``cats/001.png``), so they are unique and stable;
* the train/test split hashes the relative path (:func:`dae.sources.is_test`): the same file lands
  in the same split whatever else is in the folder and however many workers read it;
* with ``labels_from_subdirs`` the first path component is the class; sorted class names map to
  0, 1, ... (:mod:`dae.prepare` saves the mapping as ``classes.json``);
* images are decoded as the denoise job decodes files (:func:`dae.images.decode_image`): upright, EXIF
  orientation applied (phone photos are stored sideways with a tag), so a photo prepared into shards and
  the same file denoised directly are the same pixels;
* RGBA/LA images lose their alpha channel (counted in ``stats["alpha_dropped"]``), 16-bit gray or
  color stays 16-bit (:func:`dae.shards.decode_png`);
* unreadable files go to ``Prepared.errors`` (path + reason; :mod:`dae.prepare` writes ``errors.jsonl``) and
  are never silently skipped.

Large folders (``parallel_min_files`` files or more) are decoded with Ray Data: a list of paths,
``map_batches`` of the pure :func:`decode_files_batch` (read + decode + PNG encode in the worker),
block order preserved so records come back sorted by id whatever the parallelism. Small folders are
decoded in this process by the same function, so both paths give identical shards.

``--source folder`` takes :class:`FolderOptions`; the natural source reads its sets with this reader and
shares its two Ray Data settings (:func:`parallel_min_files_field`, :func:`files_per_task_field`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from PIL import Image

from .. import images, shards, storage
from .base import SPLITS, Encoded, Prepared, SourceError, is_test, parse_pairs, read_raw
from .registry import given_input, register_source

log = logging.getLogger("dae")

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Pillow's messages name the in-memory file object ("<_io.BytesIO object at 0x7f...>"): replaced, so
# errors.jsonl is the same on every run.
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _reason(text: str) -> str:
    return _OBJECT_REPR.sub("<file>", text)


# ---------------------------------------------------------------- pure per-file / per-batch work


def decode_file(data: bytes, max_pixels: int = shards.DEFAULT_MAX_PIXELS) -> tuple[Encoded, bool]:
    """(PNG-encoded image, whether an alpha channel was dropped) of one file's bytes.
    Raises :class:`dae.shards.ImageDecodeError` for anything unreadable."""
    had_alpha = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decode_png below applies the decompression-bomb guard
            import io

            head = Image.open(io.BytesIO(data))  # lazy: reads the header only
            had_alpha = head.mode in ALPHA_MODES or (head.mode == "P" and "transparency" in head.info)
    except Exception:
        pass  # decode_image gives the real reason
    a = images.decode_image(data, max_pixels)  # (H, W, C) uint8/uint16, upright, alpha dropped
    return Encoded(shards.encode_png(a), a.shape[0], a.shape[1], a.shape[2]), had_alpha


def decode_files_batch(batch: dict) -> dict:
    """Ray Data batch function: ``{"path": full paths/URIs, "id": relative paths}`` ->
    ``{"id", "png", "height", "width", "channels", "alpha", "error"}``, one row per input row.
    A file that cannot be read or decoded keeps its row, with empty ``png`` and the reason in
    ``error`` (so the driver can list it)."""
    ids = [str(i) for i in batch["id"]]
    n = len(ids)
    png = np.empty(n, dtype=object)
    height = np.zeros(n, np.int32)
    width = np.zeros(n, np.int32)
    channels = np.zeros(n, np.int8)
    alpha = np.zeros(n, bool)
    error = np.empty(n, dtype=object)
    for k, path in enumerate(batch["path"]):
        png[k], error[k] = b"", ""
        try:
            enc, alpha[k] = decode_file(read_raw(str(path)))
        except shards.ImageDecodeError as e:
            error[k] = _reason(str(e))
            continue
        except Exception as e:  # unreadable file (permissions, vanished, network)
            error[k] = _reason(f"unreadable file: {type(e).__name__}: {e}")
            continue
        png[k], height[k], width[k], channels[k] = enc.png, enc.height, enc.width, enc.channels
    return {"id": np.array(ids, dtype=object), "png": png, "height": height, "width": width,
            "channels": channels, "alpha": alpha, "error": error}


# ---------------------------------------------------------------- listing


def list_images(input_dir: str) -> tuple[list[str], list[str]]:
    """(sorted relative paths of image files, relative paths of all other files) under
    ``input_dir``, recursively. Relative paths use "/" on every OS, so ids do not depend on the
    machine. Hidden files (".DS_Store", "._x.jpg") count as other files: listed, never read."""
    import posixpath

    import pyarrow.fs as pafs

    if not storage.is_dir(input_dir):
        raise SourceError(f"--input {input_dir} is not a directory")
    fs, base = storage.resolve(input_dir)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    images, other = [], []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = posixpath.relpath(info.path.replace(os.sep, "/"), base.replace(os.sep, "/"))
        name = posixpath.basename(rel)
        ok = rel.lower().endswith(EXTENSIONS) and not name.startswith(".")
        (images if ok else other).append(rel)
    return sorted(images), sorted(other)


def class_of(rel: str) -> str | None:
    parts = rel.split("/")
    return parts[0] if len(parts) > 1 else None


# ---------------------------------------------------------------- reading


def _read_serial(items: list[dict], batch_size: int) -> Iterator[dict]:
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        yield decode_files_batch({"path": [i["path"] for i in chunk], "id": [i["id"] for i in chunk]})


def _read_parallel(items: list[dict], files_per_task: int) -> Iterator[dict]:
    import ray

    from .. import raylib

    raylib.init_ray()
    cpus = int(raylib.available_cpus())
    if cpus < 1:
        # Every CPU is held (e.g. by actors of another stage): a task would wait forever.
        log.warning("folder: no free CPU in the Ray cluster (%s); decoding in this process instead",
                    ray.available_resources())
        yield from _read_serial(items, files_per_task)
        return
    n_blocks = max(1, math.ceil(len(items) / files_per_task))
    # Tasks, not actors: a task holds its CPU only while it runs, so with 2 CPUs this never
    # deadlocks against other work; size the pool from what is free now.
    workers = max(1, min(cpus, n_blocks))
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    # from_items copies the current DataContext, so this only affects this dataset: blocks come
    # back in input order (sorted by id), which keeps shard contents independent of parallelism.
    ds.context.execution_options.preserve_order = True
    ds = ds.map_batches(decode_files_batch, batch_size=files_per_task, batch_format="numpy",
                        compute=ray.data.TaskPoolStrategy(size=workers), num_cpus=1)
    log.info("folder: decoding %d files with Ray Data (%d blocks, up to %d tasks)", len(items), n_blocks, workers)
    yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)


def _records(items: list[dict], labels: dict[str, int] | None, prepared: Prepared, parallel: bool,
             files_per_task: int):
    """``labels``: {id: label}, or None for unlabeled images."""
    if not items:
        return
    batches = _read_parallel(items, files_per_task) if parallel else _read_serial(items, files_per_task)
    expected = iter(items)
    for b in batches:
        for k in range(len(b["id"])):
            rid = str(b["id"][k])
            want = next(expected, {"id": None})["id"]
            if rid != want:  # the order guarantee is what makes shard names deterministic
                raise RuntimeError(f"folder: records out of order ({rid!r} arrived where {want!r} was expected)")
            if b["error"][k]:
                prepared.errors.append({"path": rid, "reason": str(b["error"][k])})
                continue
            if b["alpha"][k]:
                prepared.stats["alpha_dropped"] += 1
            enc = Encoded(bytes(b["png"][k]), int(b["height"][k]), int(b["width"][k]), int(b["channels"][k]))
            yield rid, enc, (labels[rid] if labels is not None else None)
    left = next(expected, None)
    if left is not None:
        raise RuntimeError(f"folder: the reader returned no row for {left['id']!r} (and maybe others)")


def _list_split_dirs(split_dirs: dict[str, str]) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """{split: [(path, rel)]} and the other files, each split from its own folder."""
    out, other = {}, []
    for split, d in split_dirs.items():
        if split not in SPLITS:
            raise SourceError(f"--split-dir {split}={d}: unknown split {split!r}; valid: {', '.join(SPLITS)}")
        rels, oth = list_images(d)
        if not rels:
            raise SourceError(f"--split-dir {split}={d}: no image files ({', '.join(EXTENSIONS)}) there")
        out[split] = [(storage.join(str(d).rstrip("/"), r), r) for r in rels]
        other += oth
    return out, other


def prepare(input_dir: str, dataset: str | None = None, labels_from_subdirs: bool = False,
            test_fraction: float = 0.1, limit: int | None = None, parallel_min_files: int = 2000,
            files_per_task: int = 256, split_dirs: dict[str, str] | None = None) -> Prepared:
    """Records of the image files under ``input_dir``, split into train/test by a hash of each path
    (``test_fraction``); with ``split_dirs`` ({split: folder}, e.g. a ROOT/train, ROOT/test layout)
    each split is its own folder instead, and ids are ``SPLIT/relative path``."""
    if not 0.0 <= test_fraction <= 1.0:
        raise SourceError(f"--test-fraction must be in [0, 1], got {test_fraction}")
    if files_per_task < 1:
        raise SourceError(f"files_per_task must be >= 1, got {files_per_task}")
    if split_dirs:
        dataset = dataset or "folder"
        listed, other = _list_split_dirs(split_dirs)
        where = ", ".join(f"{s}={d}" for s, d in split_dirs.items())
        files = [(f"{s}/{rel}", path, rel) for s, v in listed.items() for path, rel in v]
    else:
        dataset = dataset or os.path.basename(str(input_dir).rstrip("/")) or "folder"
        rels, other = list_images(input_dir)
        if not rels:
            raise SourceError(f"no image files ({', '.join(EXTENSIONS)}) under {input_dir}")
        where = str(input_dir)
        files = [(r, storage.join(str(input_dir).rstrip("/"), r), r) for r in rels]
    if other:
        log.info("folder: ignoring %d files that are not %s (e.g. %s)", len(other), "/".join(EXTENSIONS),
                 ", ".join(other[:3]))
    prepared = Prepared(dataset=dataset, source=f"folder:{where}", splits={},
                        stats={"alpha_dropped": 0, "files": len(files), "ignored_other_files": len(other)},
                        errors=[])
    labels = None
    if labels_from_subdirs:
        classes = sorted({c for c in (class_of(rel) for _, _, rel in files) if c is not None})
        if not classes:
            raise SourceError(f"--labels-from-subdirs: no sub-folders with images under {where}")
        index = {c: i for i, c in enumerate(classes)}
        prepared.classes = classes
        for rid, _, rel in files:
            if class_of(rel) is None:
                prepared.errors.append({"path": rid, "reason": "not inside a class sub-folder (--labels-from-subdirs)"})
        files = [f for f in files if class_of(f[2]) is not None]
        labels = {rid: index[class_of(rel)] for rid, _, rel in files}
    per_split: dict[str, list[dict]] = {"train": [], "test": []}
    for rid, path, _ in files:
        split = rid.split("/", 1)[0] if split_dirs else ("test" if is_test(rid, test_fraction) else "train")
        per_split[split].append({"path": path, "id": rid})
    if limit is not None:
        per_split = {s: v[:limit] for s, v in per_split.items()}
    total = sum(len(v) for v in per_split.values())
    parallel = total >= parallel_min_files
    log.info("folder: %d image files under %s -> train %d, test %d%s", len(files), where,
             len(per_split["train"]), len(per_split["test"]),
             f", {len(other)} other files ignored" if other else "")
    prepared.splits = {s: _records(v, labels, prepared, parallel, files_per_task) for s, v in per_split.items()}
    return prepared


# ---------------------------------------------------------------- --source folder


def parallel_min_files_field():
    return field(default=2000, metadata={
        "help": "folder: decode with Ray Data from this many files on (smaller folders: in process)"})


def files_per_task_field():
    return field(default=256, metadata={"help": "folder: files per Ray Data block/task"})


@dataclass(frozen=True)
class FolderOptions:
    labels_from_subdirs: bool = field(default=False, metadata={"help": "folder: class = first sub-folder name"})
    parallel_min_files: int = parallel_min_files_field()
    files_per_task: int = files_per_task_field()
    split_dir: tuple = field(default=(), metadata={
        "help": "folder: one folder per split instead of a hash split, SPLIT=DIR words "
                "(--split-dir train=photos/train test=photos/test)", "nargs": "*"})


def _inputs(cfg, opts: FolderOptions) -> list[str]:
    return given_input(cfg) + list(parse_pairs(opts.split_dir, "--split-dir").values())


@register_source("folder", "a folder of PNG/JPEG/TIFF/BMP images (recursive), read in parallel with Ray Data",
                 options=FolderOptions, inputs=_inputs)
def open_folder(cfg, opts: FolderOptions) -> Prepared:
    split_dirs = parse_pairs(opts.split_dir, "--split-dir")
    if not cfg.input and not split_dirs:
        raise SourceError("--source folder needs --input DIR (a folder of images) or --split-dir train=DIR test=DIR")
    return prepare(cfg.input, dataset=cfg.name or None, labels_from_subdirs=opts.labels_from_subdirs,
                   test_fraction=cfg.test_fraction, limit=cfg.limit,
                   parallel_min_files=opts.parallel_min_files, files_per_task=opts.files_per_task,
                   split_dirs=split_dirs or None)
