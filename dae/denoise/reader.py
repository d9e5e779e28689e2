"""Reading a denoise output: only what the markers of the manifest's generation list
(:mod:`dae.denoise.outputs` has the layout and its rules)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import shards, storage
from .commits import read_markers
from .outputs import ERRORS_SCHEMA


def generation_of(out: str) -> str | None:
    """The manifest's generation (None for an output without a manifest: every marker counts)."""
    from . import manifest

    m = manifest.read(out)
    return m["generation"] if m else None


def markers(out: str) -> list[dict]:
    """Every marker that counts, sorted by input stem."""
    found = read_markers(out, generation_of(out))
    return [found[st] for st in sorted(found)]


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
    if what not in ("data", "errors"):
        raise ValueError(f"what must be 'data' or 'errors', got {what!r}")
    schema = ERRORS_SCHEMA if what == "errors" else None
    tables = []
    for m in markers(out):
        for part in m.get(what, []):
            t = _read(storage.join(out, part), columns)
            if what == "data" and (columns is None or "input" in columns):
                # an image file's row: its input is the file (its id), not the group committing it
                col = t.column("id") if m.get("kind") == "files" and "id" in t.column_names \
                    else pa.array([m["input"]] * t.num_rows, pa.string())
                t = t.append_column("input", col)
            tables.append(t)
    if not tables:
        return schema.empty_table() if schema is not None else pa.table({"id": pa.array([], pa.string())})
    t = pa.concat_tables(tables, promote_options="default")
    if "id" not in t.column_names or "input" not in t.column_names:
        return t
    return t.sort_by([("input", "ascending"), ("id", "ascending")])


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
