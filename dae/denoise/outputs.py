"""The denoise stage's output layout: parts written by workers, one marker per input committing them.

    OUT/data/<stem>/part-<uid>.parquet     denoised rows of input file <stem>, written by a Ray worker
    OUT/errors/<stem>/part-<uid>.parquet   failed rows of <stem> (id, reason, stage, input)
    OUT/_done/<stem>.json                  the marker: lists the parts that make up <stem>'s output;
                                           written by the driver after every part it lists
    OUT/summary.json, OUT/samples.png, OUT/config.resolved.json

Rules (what makes every input id land exactly once in data or errors):
- A part is written whole (temp file + rename locally; one PUT on S3) by the task that produced its
  rows, and named with a fresh uid, so two attempts never write the same file.
- The driver learns of a part only from the small metadata row its writer returns. An input is
  committed when the rows of its parts add up to the input's row count: the driver then writes the
  marker listing exactly those parts. A retried task's earlier attempt may have left a part that no
  marker lists; the driver deletes such orphans just before it writes the marker, and a rerun
  deletes whatever an uncommitted input left before redoing it.
- :func:`read_outputs` reads only the parts listed in markers. After a run that finished, ``data/``
  and ``errors/`` hold exactly the committed parts, so any Parquet reader sees the same rows; after a
  killed run, only :func:`read_outputs` (or a rerun, which cleans up) gives the committed view.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import inference, shards, storage

LAYOUT = 3  # output layout version: 1 was one data file per input written by the driver; 3 added noise_sigma
# Metric sums are integers in units of 1e-9 (of a dB, of SSIM): integer addition is associative, so
# the means do not depend on how rows were split into parts (float sums differ in the last bit).
METRIC_SCALE = 10**9
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

    paths = np.asarray(batch[inference.PATH])
    errors = np.asarray(batch[inference.ERROR]).astype(str)
    node = _node_id()
    meta: dict[str, list] = {k: [] for k in META_COLUMNS}
    for inner in sorted(set(paths.tolist())):
        rows = np.flatnonzero(paths == inner)
        rel = relative(inner, root_inner)
        stem = output_stem(rel)
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
                          "input": pa.array([rel] * len(bad), pa.string())}, schema=ERRORS_SCHEMA)
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


def commit(out: str, stem: str, rel: str, p: Pending, fingerprint: str) -> dict:
    """Commit a complete input: delete any file of that input that is not one of its reported parts
    (an earlier attempt's, or a temporary), then write the marker listing the parts. Returns it."""
    marker = {"layout": LAYOUT, "input": rel, "stem": stem, "rows_in": p.rows_in, "rows_out": p.rows_ok,
              "rows_failed": p.rows_failed, "data": sorted(p.data), "errors": sorted(p.errors),
              "metric_sums_e9": p.sums, "metric_counts": p.counts, "writers": p.writers, "fingerprint": fingerprint,
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    listed = {storage.join(out, x) for x in marker["data"] + marker["errors"]}
    for d in (data_dir(out, stem), errors_dir(out, stem)):
        for f in _all_files(d):
            if f not in listed:
                storage.delete(f)
    # Last: a crash before this line leaves the input uncommitted, and a rerun redoes it.
    storage.write_json(marker_path(out, stem), marker)
    return marker


def _all_files(d: str) -> list[str]:
    """Every file under ``d``, temporaries included (list_files hides dot-files)."""
    import pyarrow.fs as pafs

    fs, p = storage.resolve(d)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True, allow_not_found=True))
    return [storage.join(d, i.path[len(p.rstrip("/")) + 1:]) for i in infos if i.type == pafs.FileType.File]


def clear_uncommitted(out: str, stems: set[str]) -> int:
    """Delete what killed runs left of inputs that are not committed (one LIST per folder)."""
    import pyarrow.fs as pafs

    n = 0
    for sub in ("data", "errors"):
        fs, p = storage.resolve(storage.join(out, sub))
        for info in fs.get_file_info(pafs.FileSelector(p, recursive=False, allow_not_found=True)):
            name = info.base_name
            if info.type == pafs.FileType.Directory and name in stems:
                storage.delete(storage.join(out, sub, name))
                n += 1
    return n


def read_marker(out: str, stem: str, rows_in: int, fingerprint: str) -> dict | None:
    """The marker of ``stem`` when it is complete for this run, else None. Raises when the output was
    made by a different run (mixing them would make a dataset that is no single run's result)."""
    p = marker_path(out, stem)
    if not storage.exists(p):
        return None
    m = storage.read_json(p)
    if m.get("fingerprint") != fingerprint:
        raise ValueError(f"{storage.redact(out)} holds outputs of a different run (model, noise, seed, tiling, "
                         f"channel conversion or output layout differ: {storage.redact(p)}); use a new "
                         f"--output or pass --overwrite")
    if m.get("rows_in") != rows_in:
        return None  # the input changed since: recompute it
    return m


# ---------------------------------------------------------------- reading committed outputs


def markers(out: str) -> list[dict]:
    """Every marker under OUT/_done, sorted by input stem."""
    return [storage.read_json(f) for f in storage.list_files(storage.join(out, "_done"), ".json")]


def committed_parts(out: str, what: str = "data") -> list[tuple[str, str]]:
    """[(input, part path)] of every committed part of ``what`` ("data" or "errors")."""
    if what not in ("data", "errors"):
        raise ValueError(f"what must be 'data' or 'errors', got {what!r}")
    return [(m["input"], storage.join(out, part)) for m in markers(out) for part in m.get(what, [])]


def _read(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, inner = storage.resolve(path)
    return pq.read_table(inner, filesystem=fs, columns=columns).replace_schema_metadata(None)


def read_outputs(out: str, what: str = "data", columns: list[str] | None = None) -> pa.Table:
    """The committed rows of a denoise output as one Arrow table (for outputs that fit in memory; for
    bigger ones, ``ray.data.read_parquet([p for _, p in committed_parts(out)])``).

    Rows come grouped by input file (inputs sorted by path), sorted by id within an input, with an
    ``input`` column naming the input file (the errors table has it already). Parts a killed run left
    uncommitted are never read."""
    parts = committed_parts(out, what)
    schema = ERRORS_SCHEMA if what == "errors" else None
    tables = []
    for rel, path in parts:
        t = _read(path, columns)
        if what == "data" and (columns is None or "input" in columns):
            t = t.append_column("input", pa.array([rel] * t.num_rows, pa.string()))
        tables.append(t)
    if not tables:
        return schema.empty_table() if schema is not None else pa.table({"id": pa.array([], pa.string())})
    t = pa.concat_tables(tables, promote_options="default")
    if "id" not in t.column_names or "input" not in t.column_names:
        return t
    return t.sort_by([("input", "ascending"), ("id", "ascending")])


def export_batch(batch: dict, export_dir: str) -> dict:
    """Ray Data batch function: each denoised PNG to EXPORT/<safe id>-<hash>.png; returns the count."""
    for i, png in zip(batch["id"], batch["denoised"]):
        storage.write_bytes(storage.join(export_dir, inference.export_name(str(i))), bytes(png))
    return {"exported": np.array([len(batch["id"])], np.int64)}


def load_samples(out: str, n: int) -> dict[str, list[np.ndarray]] | None:
    """The first ``n`` committed rows in :func:`read_outputs` order, decoded: {column: images} with
    ``image`` (the input), ``denoised`` and, with synthetic noise, ``noisy``. Reads the first inputs only."""
    if n <= 0:
        return None
    by_input: dict[str, list[str]] = {}
    for rel, path in committed_parts(out, "data"):
        by_input.setdefault(rel, []).append(path)
    got: list[pa.Table] = []
    for rel in sorted(by_input):
        t = pa.concat_tables([_read(p) for p in by_input[rel]])
        got.append(t.sort_by("id").slice(0, n - sum(x.num_rows for x in got)))
        if sum(x.num_rows for x in got) >= n:
            break
    if not got or not sum(x.num_rows for x in got):
        return None
    rows = pa.concat_tables(got)
    return {k: [shards.to_float(shards.decode_png(b)) for b in rows.column(k).to_pylist()]
            for k in ("image", "denoised", "noisy") if k in rows.column_names}
