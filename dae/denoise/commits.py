"""The driver's destructive steps on a denoise output, each ordered so that a kill at any point leaves
the old committed view or the new one (:mod:`dae.denoise.outputs` has the layout and its rules):
commits (parts checked, marker written, only then old files deleted), retirements (marker first),
garbage collection, and the bookkeeping of exported images.

Every step that deletes or replaces something calls :func:`step` first: tests kill the process
there (tests/killpoint.py) and check that a rerun ends with every id exactly once.
"""

from __future__ import annotations

import time
from typing import Callable

from .. import storage
from .manifest import LAYOUT
from .outputs import Pending, data_dir, errors_dir, marker_path

STEP_HOOK: Callable[[str], None] | None = None


def step(name: str) -> None:
    if STEP_HOOK is not None:
        STEP_HOOK(name)


def _names(d: str, suffix: str) -> list[str]:
    """Base names (without ``suffix``) of the files directly in ``d``, '_' and '.' names included
    (storage.list_files hides them, and an input stem may start with one), temporaries excluded."""
    import pyarrow.fs as pafs

    fs, p = storage.resolve(d)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False, allow_not_found=True))
    return sorted(i.base_name[:-len(suffix)] for i in infos
                  if i.type == pafs.FileType.File and i.base_name.endswith(suffix) and ".tmp-" not in i.base_name)


def marker_stems(out: str) -> list[str]:
    return _names(storage.join(out, "_done"), ".json")


def read_markers(out: str, generation: str | None) -> dict[str, dict]:
    """{stem: marker} of the markers that count: those of the manifest's ``generation`` (every marker
    for an output without a manifest). Markers are read in parallel (one GET each on S3)."""
    from concurrent.futures import ThreadPoolExecutor

    stems = marker_stems(out)
    with ThreadPoolExecutor(max_workers=16) as pool:
        found = list(pool.map(lambda st: (st, storage.read_json(marker_path(out, st))), stems))
    return {st: m for st, m in found if generation is None or m.get("generation") == generation}


def output_files(out: str) -> set[str]:
    """Every file under OUT/data and OUT/errors (one recursive LIST each)."""
    return set(all_files(storage.join(out, "data"))) | set(all_files(storage.join(out, "errors")))


def all_files(d: str) -> list[str]:
    """Every file under ``d``, temporaries included (list_files hides dot-files)."""
    import pyarrow.fs as pafs

    fs, p = storage.resolve(d)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True, allow_not_found=True))
    return [storage.join(d, i.path[len(p.rstrip("/")) + 1:]) for i in infos if i.type == pafs.FileType.File]


def listed(out: str, m: dict) -> set[str]:
    return {storage.join(out, x) for x in m.get("data", []) + m.get("errors", [])}


def commit(out: str, stem: str, rel: str, p: Pending, fingerprint: str, generation: str, identity: dict,
           check_lease: Callable[[], None] | None = None, extra: dict | None = None) -> dict:
    """Commit a complete input: check that every part it lists exists, write its marker (replacing
    an older one in one atomic write), and only then delete the files of that input that the marker
    does not list (an earlier attempt's orphans, a temporary, or the parts the old marker listed).
    Returns the marker."""
    marker = {"layout": LAYOUT, "input": rel, "stem": stem, "rows_in": p.rows_in, "rows_out": p.rows_ok,
              "rows_failed": p.rows_failed, "data": sorted(p.data), "errors": sorted(p.errors),
              "metric_sums_e9": p.sums, "metric_counts": p.counts, "writers": p.writers, "fingerprint": fingerprint,
              "generation": generation, "identity": identity,
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {})}
    keep = listed(out, marker)
    present = set(all_files(data_dir(out, stem))) | set(all_files(errors_dir(out, stem)))
    missing = sorted(keep - present)
    if missing:
        raise RuntimeError(f"{rel}: {len(missing)} part(s) reported written are missing "
                           f"(first: {storage.redact(missing[0])}); the input stays uncommitted, rerun to redo it")
    if check_lease is not None:
        check_lease()
    step("commit:before-marker")
    storage.write_json(marker_path(out, stem), marker)
    step("commit:after-marker")
    for f in sorted(present - keep):
        storage.delete(f)
    return marker


def retire(out: str, stem: str) -> None:
    """An input that is gone: its marker first (its rows leave the committed view at once), then
    its exported images, then its parts. A kill in between leaves files no marker lists, which the
    next run deletes (:func:`collect_garbage`)."""
    step("retire:before-marker")
    storage.delete(marker_path(out, stem))
    step("retire:after-marker")
    for kind in EXPORT_KINDS:
        unexport(out, stem, kind=kind)
    step("retire:after-export")
    storage.delete(data_dir(out, stem))
    storage.delete(errors_dir(out, stem))


def collect_garbage(out: str, markers: dict[str, dict], present: set[str]) -> dict[str, int]:
    """Delete what no counting marker lists: parts of uncommitted inputs (a killed run's), parts an
    older marker listed, markers of an earlier generation (an interrupted --overwrite), exports of
    retired inputs. ``present``: the files under data/ and errors/ (the caller's listing, made with
    the lease held, so nothing has been written since). Called before the pipeline writes anything."""
    keep: set[str] = set()
    for m in markers.values():
        keep |= listed(out, m)
    n = {"parts": 0, "markers": 0, "exports": 0}
    for st in marker_stems(out):
        if st not in markers:
            step("garbage:marker")
            storage.delete(marker_path(out, st))
            n["markers"] += 1
    for kind in EXPORT_KINDS:
        for st in _names(storage.join(out, kind), ".json"):
            if st not in markers:
                unexport(out, st, kind=kind)
                n["exports"] += 1
    for f in sorted(present - keep):
        step("garbage:part")
        storage.delete(f)
        n["parts"] += 1
    return n


# ---------------------------------------------------------------- exported images (--export-png, --export)

# The folders of export markers: --export-png's (flat names) and --export's (input paths)
EXPORT_KINDS = ("_exported", "_export")


def export_marker_path(out: str, stem: str, kind: str = "_exported") -> str:
    return storage.join(out, kind, f"{stem}.json")


def unexport(out: str, stem: str, keep: set[str] = frozenset(), kind: str = "_exported") -> None:
    """Delete the images an input's export marker lists (except ``keep``), then the marker."""
    p = export_marker_path(out, stem, kind)
    if not storage.exists(p):
        return
    m = storage.read_json(p)
    for name in m.get("names", []):
        if name not in keep:
            storage.delete(storage.join(m["export"], name))
    step("export:before-marker-delete")
    storage.delete(p)


