"""Image files as input: ``--input`` a folder, a glob or an S3 prefix of PNG/JPEG/TIFF/BMP/WebP files.

    list_any(input, split)   which kind the input is and its listing: shards (dae.denoise.scan, as
                             always) or image files (a compact listing, grouped for commits)
    probe_files(paths)       a few files' sizes and channels (a Ray task: sizes the batches, and fails
                             a run whose images all mismatch the model before any work)
    file_blocks(...)         the pending files as Arrow blocks (path, id, stem) for ray.data.from_arrow
    read_files_batch(batch)  Ray workers: read + decode each file (EXIF orientation, 16-bit kept) into
                             a shard-format row; an unreadable file keeps its row with the reason

Rules:
- Kind: a glob is image files; a .parquet file, or --split, is shards; a folder or prefix holding
  any (not hidden) .parquet file is shards, else image files if it holds any; else a one-line error.
  Names starting with '.' anywhere in the path are hidden and skipped (.thumbnails/, .DS_Store,
  ._IMG_1.JPG); unlike shard roots (Spark's rule, '.' or '_'), '_' names are photos like any other:
  cameras name files _DSC0001.JPG.
- An image's id is its path under the input root ('/'-separated; for a glob, under the folder before
  its first wildcard).
- The driver holds the listing as Arrow/numpy arrays (relative path, size, mtime): no image bytes and
  no per-file Python object outlives the listing step (it is built in chunks of LIST_CHUNK files).
- Commits: files are committed in groups, each one marker (:mod:`.outputs`). A group starts at
  a file chosen by its own path and size alone: with probability max(1/GROUP_FILES, size/GROUP_BYTES),
  decided by a hash of the path (content-defined: adding or removing a file changes only its own
  group, and the groups after it keep their members; small images come ~GROUP_FILES to a group, 4 MB
  photos ~64, so a killed run redoes minutes of work, not hours), or after GROUP_MAX files. A
  group's stem comes from its first path; its identity is the digest of its files' (path, size,
  mtime), so the rerun rules of :mod:`.rerun` apply to groups as to shard files (a changed group is
  redone, a gone one retired).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .. import images, inference, shards, storage
from .scan import InputFile, Listing, list_inputs, relative

GROUP_FILES = 256  # files per commit group, on average, for small files
GROUP_BYTES = 256 * 2**20  # bytes of input files per commit group, on average, for large ones
GROUP_MAX = 1024
LIST_CHUNK = 8192
SKIP_NOT_IMAGE = f"not an image file ({', '.join(images.EXTENSIONS)})"
SKIP_NO_MATCH = "does not match the glob"
SKIP_HIDDEN = "hidden: a name in its path starts with '.'"
SHOW = 20  # skipped paths kept per reason (the rest counted)


@dataclass
class FileGroup(InputFile):
    """A commit unit of image files: rows [start, stop) of the sorted listing."""

    start: int = 0
    stop: int = 0
    digest: str = ""
    first: str = ""
    last: str = ""

    @property
    def identity(self) -> dict:
        return {"files": self.rows, "digest": self.digest}

    def marker_extra(self) -> dict:
        return {"kind": "files", "files": self.rows, "first": self.first, "last": self.last}


@dataclass
class ImageListing:
    root: str  # absolute folder or URI the ids are relative to
    rel: pa.Array  # sorted relative paths (ids)
    size: np.ndarray
    mtime_ns: np.ndarray

    def paths(self, idx: np.ndarray) -> pa.Array:
        import pyarrow.compute as pc

        sep = "/" if storage.is_uri(self.root) else os.sep
        rel = self.rel.take(pa.array(idx, pa.int64()))
        return pc.binary_join_element_wise(self.root.rstrip("/" + os.sep), rel, sep)


# ---------------------------------------------------------------- globs and kinds


def is_glob(path: str) -> bool:
    return any(ch in str(path) for ch in "*?[")


def split_glob(path: str) -> tuple[str, str]:
    """(root folder, pattern relative to it): the folder is everything before the first part with a
    wildcard (``photos/**/*.jpg`` -> ``photos``, ``**/*.jpg``)."""
    parts = str(path).split("/")
    k = next(i for i, p in enumerate(parts) if is_glob(p))
    root = "/".join(parts[:k]) or ("/" if str(path).startswith("/") else ".")
    return root, "/".join(parts[k:])


def glob_regex(pattern: str) -> re.Pattern:
    """A relative-path glob as a regex: ``*`` and ``?`` within one folder name, ``**/`` any folders
    (none included), ``[...]`` a class."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1:]:
            j = pattern.index("]", i + 1)
            body = pattern[i + 1:j]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def input_dir(input_path: str) -> str:
    """The folder an input names: a glob's root, else the input itself."""
    return split_glob(input_path)[0] if is_glob(input_path) else input_path


def _entries(root: str):
    """(rel, size, mtime_ns) of every file under ``root``, recursively, unsorted. Local: os.scandir, one
    folder at a time (folders not followed through symlinks; files are); else one recursive LIST."""
    import pyarrow.fs as pafs

    fs, root_inner = storage.resolve(root)
    if isinstance(fs, pafs.LocalFileSystem):
        stack = [("", root_inner)]
        while stack:
            prefix, d = stack.pop()
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append((prefix + e.name + "/", e.path))
                    elif e.is_file():
                        st = e.stat()
                        yield prefix + e.name, st.st_size, st.st_mtime_ns
        return
    infos = fs.get_file_info(pafs.FileSelector(root_inner, recursive=True, allow_not_found=True))
    while infos:  # consumed from the end: each FileInfo freed as it is used
        i = infos.pop()
        if i.type == pafs.FileType.File:
            yield relative(i.path, root_inner), int(i.size or 0), int(i.mtime_ns or 0)


def _classify(rel: str, match: re.Pattern | None) -> str:
    """'' for an image file that is an input, 'parquet' for a shard, else the skip reason."""
    if match is not None and not match.match(rel):
        return SKIP_NO_MATCH
    if any(p.startswith(".") for p in rel.split("/") if p):
        return SKIP_HIDDEN
    if images.is_image_name(rel):
        return ""
    return "parquet" if rel.endswith(".parquet") else SKIP_NOT_IMAGE


def list_images(root: str, pattern: str = "", single: str = "") -> tuple[ImageListing, int, dict, dict, int]:
    """(listing, files found, {reason: first SHOW paths}, {reason: count}, .parquet files seen)."""
    match = glob_regex(pattern) if pattern else None
    rels, sizes, mtimes = [], [], []
    buf: tuple[list, list, list] = ([], [], [])
    found, parquet = 0, 0
    skipped: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    entries = _entries(root) if not single else iter([single_entry(root, single)])
    for rel, size, mtime in entries:
        found += 1
        why = _classify(rel, match)
        if why == "parquet":
            parquet += 1
            why = SKIP_NOT_IMAGE
        if why:
            counts[why] = counts.get(why, 0) + 1
            if len(skipped.setdefault(why, [])) < SHOW:
                skipped[why].append(rel)
            continue
        for lst, v in zip(buf, (rel, size, mtime)):
            lst.append(v)
        if len(buf[0]) >= LIST_CHUNK:
            _flush(buf, rels, sizes, mtimes)
    _flush(buf, rels, sizes, mtimes)
    rel = pa.chunked_array(rels, pa.string()).combine_chunks() if rels else pa.array([], pa.string())
    size = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    mtime = np.concatenate(mtimes) if mtimes else np.zeros(0, np.int64)
    import pyarrow.compute as pc

    order = pc.sort_indices(rel).to_numpy()
    listing = ImageListing(storage.absolute(root), rel.take(pa.array(order)), size[order], mtime[order])
    return listing, found, skipped, counts, parquet


def single_entry(root: str, name: str) -> tuple[str, int, int]:
    fs, inner = storage.resolve(storage.join(root, name))
    info = fs.get_file_info(inner)
    return name, int(info.size or 0), int(info.mtime_ns or 0)


def _flush(buf, rels, sizes, mtimes) -> None:
    if buf[0]:
        rels.append(pa.array(buf[0], pa.string()))
        sizes.append(np.asarray(buf[1], np.int64))
        mtimes.append(np.asarray(buf[2], np.int64))
        for lst in buf:
            lst.clear()


def list_any(input_path: str, split: str = "") -> Listing:
    """The input's kind and listing (module docstring): shards through :func:`.scan.list_inputs`, image
    files grouped for commits. A one-line error when the input holds neither."""
    import pyarrow.fs as pafs

    if split or str(input_path).endswith(".parquet"):
        return list_inputs(input_path, split)
    root, pattern, single = input_path, "", ""
    if is_glob(input_path):
        root, pattern = split_glob(input_path)
    else:
        fs, inner = storage.resolve(input_path)
        if fs.get_file_info(inner).type == pafs.FileType.File:
            if not images.is_image_name(input_path):
                return list_inputs(input_path, split)  # the shard reader's error for a non-shard file
            root, single = os.path.dirname(storage.absolute(input_path)), os.path.basename(input_path)
            if storage.is_uri(input_path):
                root, single = input_path.rsplit("/", 1)
    listing, found, skipped, counts, parquet = list_images(root, pattern, single)
    if parquet and not pattern:
        return list_inputs(input_path, split)  # a shard root (its samples.png and the like are not inputs)
    n = len(listing.rel)
    if not n:
        why = "; ".join(f"{counts[k]} skipped ({k}; e.g. {', '.join(v[:2])})" for k, v in skipped.items())
        raise FileNotFoundError(f"no .parquet shards or image files ({', '.join(images.EXTENSIONS)}) under "
                                f"{storage.redact(input_path)}" + (f": {found} files, {why}" if why else ": no files"))
    return Listing(groups(listing), found=found, skipped=skipped, kind="files", skipped_counts=counts,
                   images=listing)


# ---------------------------------------------------------------- commit groups


def _h(text: str, size: int = 8) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).digest()


def group_starts(rel: pa.Array, size: np.ndarray | None = None, every: int = GROUP_FILES,
                 most: int = GROUP_MAX, group_bytes: int = GROUP_BYTES) -> np.ndarray:
    """Indices where groups start (module docstring), over the sorted relative paths and their sizes."""
    n = len(rel)
    size = np.zeros(n, np.int64) if size is None else size
    cuts = [0] if n else []
    for lo in range(0, n, LIST_CHUNK):
        p = np.maximum(1.0 / every, np.minimum(1.0, size[lo:lo + LIST_CHUNK] / group_bytes))
        for k, r in enumerate(rel.slice(lo, LIST_CHUNK).to_pylist()):
            if lo + k and int.from_bytes(_h(r), "little") / 2.0**64 < p[k]:
                cuts.append(lo + k)
    out = []
    for a, b in zip(cuts, cuts[1:] + [n]):
        out.extend(range(a, b, most))
    return np.asarray(out, np.int64)


def groups(listing: ImageListing) -> list[FileGroup]:
    starts = group_starts(listing.rel, listing.size)
    ends = np.append(starts[1:], len(listing.rel))
    out = []
    for a, b in zip(starts.tolist(), ends.tolist()):
        rels = listing.rel.slice(a, b - a).to_pylist()
        d = hashlib.blake2b(digest_size=16)
        for r, s, m in zip(rels, listing.size[a:b].tolist(), listing.mtime_ns[a:b].tolist()):
            d.update(f"{r}\0{s}\0{m}\n".encode("utf-8", "surrogatepass"))
        stem = inference.export_name(rels[0], "")
        out.append(FileGroup(path="", inner="", stem=stem, rel=f"{rels[0]} .. {rels[-1]} ({b - a} files)",
                             size=-1, mtime_ns=-1, rows=b - a, start=a, stop=b, digest=d.hexdigest(),
                             first=rels[0], last=rels[-1]))
    return out


# ---------------------------------------------------------------- the remote pieces


def _channels_of(mode: str) -> int:
    return 1 if mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F") else 3


def probe_files(paths: list[str]) -> dict:
    """A few files' headers: {"max_pixels", "channels": {c: files}, "failed"} (nothing decoded)."""
    from PIL import Image

    most, chans, failed = 0, {}, 0
    for p in paths:
        try:
            fs, inner = storage.resolve(p)
            with fs.open_input_file(inner) as f, Image.open(f) as img:
                w, h = img.size
                c = _channels_of(img.mode)
        except Exception:  # noqa: BLE001 - the run's read stage gives each file's reason
            failed += 1
            continue
        most = max(most, w * h)
        chans[c] = chans.get(c, 0) + 1
    return {"max_pixels": most, "channels": chans, "failed": failed}


def sample(listing: ImageListing, k: int = 16) -> list[str]:
    n = len(listing.rel)
    idx = np.unique(np.linspace(0, n - 1, min(n, k)).astype(np.int64)) if n else np.zeros(0, np.int64)
    return listing.paths(idx).to_pylist()


def file_blocks(listing: ImageListing, pending: list[FileGroup], rows: int) -> list[pa.Table]:
    """Arrow tables of ``rows`` rows (path, id, stem) over the pending groups' files, in order."""
    idx = np.concatenate([np.arange(g.start, g.stop) for g in pending]) if pending else np.zeros(0, np.int64)
    which = np.concatenate([np.full(g.stop - g.start, k, np.int32) for k, g in enumerate(pending)]) \
        if pending else np.zeros(0, np.int32)
    stems = pa.array([g.stem for g in pending], pa.string())
    out = []
    for lo in range(0, len(idx), rows):
        sel = idx[lo:lo + rows]
        out.append(pa.table({"path": listing.paths(sel), "id": listing.rel.take(pa.array(sel)),
                             "stem": pa.DictionaryArray.from_arrays(pa.array(which[lo:lo + rows]), stems)}))
    return out


def _read(path: str) -> bytes:
    fs, p = storage.resolve(path)
    with fs.open_input_stream(p, compression=None) as f:  # never "detect": a .gz is not unpacked
        return f.read()


def read_files_batch(batch: dict, max_pixels: int = shards.DEFAULT_MAX_PIXELS) -> dict:
    """Ray Data batch function: ``{path, id, stem}`` -> shard-format rows (``image`` the upright
    image as PNG, height, width, channels, label NaN, split "") plus ``stem``, and ``read_error`` /
    ``read_stage`` ("" when fine; "read" for a file that cannot be read, "decode" for one that is no
    readable image): every row kept."""
    n = len(batch["id"])
    png = np.empty(n, dtype=object)
    hwc = np.zeros((n, 3), np.int64)
    err = np.full(n, "", dtype=object)
    stage = np.full(n, "", dtype=object)
    for k, path in enumerate(batch["path"]):
        png[k] = b""
        try:
            data = _read(str(path))
        except Exception as e:  # noqa: BLE001 - vanished, permissions, network: the row says so
            err[k], stage[k] = f"unreadable file: {type(e).__name__}: {e}"[:2000], "read"
            continue
        try:
            a = images.decode_image(data, max_pixels)
            png[k] = shards.encode_png(a)
        except Exception as e:  # noqa: BLE001 - ImageDecodeError, or an image PNG cannot hold
            err[k], stage[k] = (str(e) if isinstance(e, shards.ImageDecodeError)
                                else f"{type(e).__name__}: {e}")[:2000], "decode"
            continue
        hwc[k] = a.shape
    return {"id": np.asarray([str(i) for i in batch["id"]], dtype=object), "image": png,
            "height": hwc[:, 0].astype(np.int32), "width": hwc[:, 1].astype(np.int32),
            "channels": hwc[:, 2].astype(np.int8), "label": np.full(n, np.nan), "split": np.full(n, "", dtype=object),
            "stem": np.asarray([str(s) for s in batch["stem"]], dtype=object), "read_error": err, "read_stage": stage}


def read_and_prepare(batch: dict, model_channels: int, max_pixels: int = shards.DEFAULT_MAX_PIXELS, **kw) -> dict:
    """The files' first stage: read and decode (:func:`read_files_batch`), then prepare
    (:func:`.auto.prepare_rows`: channel check or per-channel models, noise)."""
    from .auto import prepare_rows

    return prepare_rows(read_files_batch(batch, max_pixels), model_channels, max_pixels=max_pixels, **kw)
