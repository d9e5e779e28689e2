"""The denoise stage's output layout: parts written by workers, one marker per input committing them.

    OUT/_manifest.json                     which run's outputs these are (dae.denoise.manifest)
    OUT/_lease.json                        held by the run writing OUT (dae.denoise.lease)
    OUT/data/<stem>/part-<uid>.parquet     denoised rows of input file <stem>, written by a Ray worker
    OUT/errors/<stem>/part-<uid>.parquet   failed rows of <stem> (id, reason, stage, input)
    OUT/_done/<stem>.json                  the marker: lists the parts that make up <stem>'s output and
                                           the identity (size, mtime, rows) of the input it came from;
                                           written by the driver after every part it lists
    OUT/_exported/<stem>.json              --export-png: the images written for <stem>'s committed parts
    OUT/_export/<stem>.json                --export: the same for the images written at their input paths
    OUT/summary.json, OUT/samples.png, OUT/config.resolved.json

Rules (what makes every input id land exactly once in data or errors, across reruns):
- A part is written whole (temp file, fsync, rename locally; one PUT on S3) by the task that
  produced its rows, and named with a fresh uid, so two attempts never write the same file.
- The driver learns of a part only from the small metadata row its writer returns. An input is
  committed when the rows of its parts add up to the input's row count: the driver checks that every
  part exists, writes the marker listing exactly those parts (replacing an older marker of the same
  input in one atomic write), and only THEN deletes the input's files the marker does not list. So a
  reader sees the old rows or the new ones, never both and never neither.
- Only the markers of the manifest's generation count. :func:`read_outputs` reads only the parts they
  list. A rerun first deletes everything no counting marker lists (:func:`collect_garbage`), so after
  a run that finished, ``data/`` and ``errors/`` hold exactly the committed parts and any Parquet
  reader sees the same rows; after a killed run, only :func:`read_outputs` (or a rerun) gives the
  committed view.
- Image files (:mod:`.files`) are committed in groups: a <stem> is a group of files, its marker
  says ``"kind": "files"``, and :func:`read_outputs` gives each row its file as ``input``.
- The output mirrors the input: an input that is gone (removed, renamed) is retired by its marker
  first, then its exported images and parts (``--keep-removed`` keeps them instead).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import inference, storage
from .manifest import LAYOUT

# Metric sums are integers in units of 1e-9 (of a dB, of SSIM): integer addition is associative, so
# the means do not depend on how rows were split into parts (float sums differ in the last bit).
METRIC_SCALE = 10**9
STEM = "stem"  # rows of image files: the stem of their commit group (an image's errors row names the file)
# Columns of the small metadata row a writer returns per part: all the driver ever receives.
META_COLUMNS = ("stem", "data_part", "errors_part", "rows_ok", "rows_failed", "node",
                *(f"sum_{k}" for k in inference.METRIC_COLUMNS), *(f"n_{k}" for k in inference.METRIC_COLUMNS))


def marker_path(out: str, stem: str) -> str:
    return storage.join(out, "_done", f"{stem}.json")


def data_dir(out: str, stem: str) -> str:
    return storage.join(out, "data", stem)


def errors_dir(out: str, stem: str) -> str:
    return storage.join(out, "errors", stem)


# ---------------------------------------------------------------- the write stage (Ray workers)


def _data_schema(with_noise: bool) -> pa.Schema:
    cols = [("id", pa.string()), ("denoised", pa.binary())]
    if with_noise:
        cols.append(("noisy", pa.binary()))
    cols += [("image", pa.binary()), ("height", pa.int32()), ("width", pa.int32()), ("channels", pa.int8()),
             ("label", pa.int64()), ("split", pa.string()), ("noise_sigma", pa.float32())]
    if with_noise:
        cols += [(k, pa.float64()) for k in inference.METRIC_COLUMNS]
    return pa.schema(cols)


ERRORS_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()), ("stage", pa.string()),
                           ("input", pa.string())])


def _label_array(values) -> pa.Array:
    # Ray hands a label column with nulls back as float NaN (and all-set labels as int64).
    v = np.asarray(values)
    if v.dtype.kind == "f":
        return pa.array(np.nan_to_num(v, nan=0).astype(np.int64), pa.int64(), mask=np.isnan(v))
    if v.dtype == object:
        return pa.array([None if x is None or (isinstance(x, float) and np.isnan(x)) else int(x) for x in v],
                        pa.int64())
    return pa.array(v.astype(np.int64), pa.int64())


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - the id is informative only
        pass
    return "local"


def _write_table(path: str, table: pa.Table, metadata: dict[str, str]) -> None:
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes(path, sink.getvalue().to_pybytes())


def write_parts(batch: dict, out: str, root_inner: str, with_noise: bool, fingerprint: str) -> dict:
    """Finished rows -> one data part and at most one errors part per input file in the batch, written
    here on the worker; returns one small metadata row per input file (:data:`META_COLUMNS`)."""
    from .scan import output_stem, relative

    # Rows of image files carry their commit group's stem (dae.denoise.files); shard rows their file.
    stems = np.asarray(batch[STEM]).astype(str) if STEM in batch else None
    keys = stems if stems is not None else np.asarray(batch[inference.PATH])
    errors = np.asarray(batch[inference.ERROR]).astype(str)
    node = _node_id()
    meta: dict[str, list] = {k: [] for k in META_COLUMNS}
    for key in sorted(set(keys.tolist())):
        rows = np.flatnonzero(keys == key)
        rel = key if stems is not None else relative(key, root_inner)
        stem = key if stems is not None else output_stem(rel)
        ok, bad = rows[errors[rows] == ""], rows[errors[rows] != ""]
        kv = {"dae.input": rel, "dae.writer_node": node, "dae.fingerprint": fingerprint,
              "dae.layout": str(LAYOUT)}
        uid = uuid.uuid4().hex
        data_part = errors_part = ""
        sums = {k: (0, 0) for k in inference.METRIC_COLUMNS}
        if len(ok):
            schema = _data_schema(with_noise)
            cols = {}
            for f in schema:
                if f.name == "noise_sigma":  # the level a conditioned model was told (0-255); null for others
                    v = np.asarray(batch[inference.SIGMA][ok], np.float32) * np.float32(255)
                    cols[f.name] = pa.array(v, f.type, mask=~np.isfinite(v))
                    continue
                v = batch[f.name][ok]
                cols[f.name] = _label_array(v) if f.name == "label" else pa.array(list(v) if v.dtype == object
                                                                                    else v, f.type)
            data_part = f"data/{stem}/part-{uid}.parquet"
            _write_table(storage.join(out, data_part), pa.table(cols, schema=schema), kv)
            if with_noise:
                for k in inference.METRIC_COLUMNS:
                    v = np.asarray(batch[k][ok], np.float64)
                    fin = np.isfinite(v)
                    sums[k] = (int(np.round(v[fin] * METRIC_SCALE).astype(np.int64).sum()), int(fin.sum()))
        if len(bad):
            t = pa.table({"id": pa.array([str(x) for x in batch["id"][bad]], pa.string()),
                          "reason": pa.array([str(x) for x in errors[bad]], pa.string()),
                          "stage": pa.array([str(x) for x in batch[inference.ERROR_STAGE][bad]], pa.string()),
                          "input": pa.array([str(x) for x in batch["id"][bad]] if stems is not None
                                            else [rel] * len(bad), pa.string())}, schema=ERRORS_SCHEMA)
            errors_part = f"errors/{stem}/part-{uid}.parquet"
            _write_table(storage.join(out, errors_part), t, kv)
        for k, v in (("stem", stem), ("data_part", data_part), ("errors_part", errors_part),
                     ("rows_ok", len(ok)), ("rows_failed", len(bad)), ("node", node)):
            meta[k].append(v)
        for k, (s, n) in sums.items():
            meta[f"sum_{k}"].append(s)
            meta[f"n_{k}"].append(n)
    return {k: np.array(v, dtype=object if k in ("stem", "data_part", "errors_part", "node") else np.int64)
            for k, v in meta.items()}


def finish_and_write(batch: dict, out: str, root_inner: str, with_noise: bool, fingerprint: str) -> dict:
    """The last CPU stage: PNG encode and metrics (:func:`dae.inference.finish_batch`), then the parts."""
    return write_parts(inference.finish_batch(batch, with_noise=with_noise), out, root_inner, with_noise,
                       fingerprint)


# ---------------------------------------------------------------- the driver's books and commits


@dataclass
class Pending:
    """What the driver knows of one input while its parts arrive."""

    rows_in: int
    rows_ok: int = 0
    rows_failed: int = 0
    data: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sums: dict[str, int] = field(default_factory=dict)  # in units of 1 / METRIC_SCALE
    counts: dict[str, int] = field(default_factory=dict)
    writers: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.rows_ok + self.rows_failed


class Books:
    """The driver's accounts: adds up metadata rows per input and says when an input is complete.
    Counts what it received (rows, bytes, columns): the proof that no image reaches the driver."""

    def __init__(self, rows_in: dict[str, int]):
        self.open = {stem: Pending(n) for stem, n in rows_in.items()}
        self.received = {"batches": 0, "rows": 0, "bytes": 0, "columns": []}
        self.cpu_s = 0.0  # CPU the driver spent on the books and commits (its thread time)

    def add(self, table: pa.Table) -> list[tuple[str, Pending]]:
        """One batch of metadata rows -> the inputs it completed."""
        self.received["batches"] += 1
        self.received["rows"] += table.num_rows
        self.received["bytes"] += table.nbytes
        for name in table.column_names:
            if name not in self.received["columns"]:
                self.received["columns"].append(name)
        done = []
        for r in table.to_pylist():
            p = self.open.get(r["stem"])
            if p is None:
                raise RuntimeError(f"a writer reported rows of {r['stem']!r}, which is not an open input")
            p.rows_ok += r["rows_ok"]
            p.rows_failed += r["rows_failed"]
            if r["data_part"]:
                p.data.append(r["data_part"])
            if r["errors_part"]:
                p.errors.append(r["errors_part"])
            for k in inference.METRIC_COLUMNS:
                p.sums[k] = p.sums.get(k, 0) + r[f"sum_{k}"]
                p.counts[k] = p.counts.get(k, 0) + r[f"n_{k}"]
            p.writers[r["node"]] = p.writers.get(r["node"], 0) + r["rows_ok"] + r["rows_failed"]
            if p.rows > p.rows_in:
                raise RuntimeError(f"{r['stem']}: writers reported {p.rows} rows, the input has {p.rows_in}")
            if p.rows == p.rows_in:
                done.append((r["stem"], self.open.pop(r["stem"])))
        return done


# ---------------------------------------------------------------- the export stage (Ray workers)


def export_batch(batch: dict, export_dir: str) -> dict:
    """Ray Data batch function: each denoised PNG to EXPORT/<safe id>-<hash>.png; returns the names
    written and the part each came from (small strings: the driver records the names per input, to
    delete them when the input is recomputed or retired)."""
    names = []
    for i, png in zip(batch["id"], batch["denoised"]):
        names.append(inference.export_name(str(i)))
        storage.write_bytes(storage.join(export_dir, names[-1]), bytes(png))
    return {"name": np.array(names, dtype=object), "path": np.asarray(batch["path"], dtype=object)}
