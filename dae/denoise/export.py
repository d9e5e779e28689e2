"""``--export DIR``: each denoised image of an image-file input written at its input's path under DIR.

    photos/2024/IMG_1.JPG  ->  DIR/2024/IMG_1.png     (--export-format png, the default; 16-bit
                                                       stays 16-bit)
                           ->  DIR/2024/IMG_1.JPG     (--export-format same, JPEG at --export-quality)

Rules (the bookkeeping is :func:`dae.denoise.pipeline.export_pngs`'s, in OUT/_export/<stem>.json):
- Ray Data workers read the committed parts and write the files; the driver only decides which
  groups to export (those whose committed parts, folder, format or quality differ from their export
  marker's, or whose last export was refused somewhere) and records the names written.
- A path that would land outside DIR is refused (:func:`dae.images.export_target`).
- A file is written whole or not at all (temporary file, then a link or rename; one PUT on S3).
- A file already at the target is replaced only when this output wrote it (an export marker of
  this output lists it) or with --overwrite; otherwise it is left alone and the run fails at its
  end, naming it. Images a group's older export had and its new one does not are deleted, unless
  another group's export holds them now (a file that moved to another group).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from .. import images, storage
from . import commits

log = logging.getLogger("dae")
KIND = "_export"
SHOW = 5


def export_batch(batch: dict, export_dir: str, fmt: str, quality: int, overwrite: bool, ours: pa.Array) -> dict:
    """Ray Data batch function: rows (id, denoised, path) -> (name, path, refused): each image written
    at its export path, or the reason it was not."""
    import pyarrow.compute as pc

    ids = [str(i) for i in batch["id"]]
    names, refused, targets = [""] * len(ids), [""] * len(ids), [""] * len(ids)
    for k, rid in enumerate(ids):
        try:
            names[k] = images.export_relpath(rid, fmt)
            targets[k] = images.export_target(export_dir, names[k])
        except ValueError as e:
            refused[k] = f"{e}: not exported"
    mine = pc.is_in(pa.array(names, pa.string()), value_set=ours).to_numpy(zero_copy_only=False) \
        if len(ours) else np.zeros(len(ids), bool)
    for k, (rid, png) in enumerate(zip(ids, batch["denoised"])):
        if refused[k]:
            continue
        target = targets[k]
        try:
            data = images.encode_export(png, rid, fmt, quality)
            if overwrite or mine[k]:
                images.write_new(target, data, replace=True)
            elif storage.is_uri(target) and storage.exists(target):
                raise FileExistsError(target)
            else:
                images.write_new(target, data, replace=False)
        except FileExistsError:
            refused[k] = (f"{storage.redact(target)} exists and was not written by this output: left as it is "
                          f"(--overwrite replaces it)")
        except Exception as e:  # noqa: BLE001 - one image's failure is reported, the others written
            refused[k] = f"{type(e).__name__}: {e}"[:500]
    return {"name": np.array(names, dtype=object), "path": np.asarray(batch["path"], dtype=object),
            "refused": np.array(refused, dtype=object)}


def _marker(out: str, stem: str) -> dict | None:
    p = commits.export_marker_path(out, stem, KIND)
    return storage.read_json(p) if storage.exists(p) else None


def export_files(out: str, export_dir: str, fmt: str, quality: int, overwrite: bool,
                 markers: dict[str, dict]) -> dict:
    """Export every committed group not yet exported as asked; returns {"written", "refused",
    "first_refused"}."""
    from concurrent.futures import ThreadPoolExecutor

    import ray.data

    with ThreadPoolExecutor(max_workers=16) as pool:
        old = dict(zip(sorted(markers), pool.map(lambda st: _marker(out, st), sorted(markers))))
    want = {"export": export_dir, "format": fmt, "quality": quality if fmt == "same" else None}
    todo = [st for st, m in sorted(markers.items())
            if not old[st] or {k: old[st].get(k) for k in want} != want or old[st].get("parts") != m["data"]
            or old[st].get("refused")]
    # Ours: every name an export marker of this output lists in this folder (this run may move a file
    # from one group to another, so not only the todo groups' own)
    ours = pa.array(sorted({n for m in old.values() if m and m.get("export") == export_dir
                            for n in m.get("names", [])}), pa.string())
    names: dict[str, list[str]] = {st: [] for st in todo}
    refused: dict[str, list[str]] = {st: [] for st in todo}
    part_stem = {storage.resolve(storage.join(out, p))[1]: st for st in todo for p in markers[st]["data"]}
    if part_stem:
        fs, _ = storage.resolve(out)
        ds = ray.data.read_parquet(sorted(part_stem), filesystem=fs, include_paths=True) \
            .select_columns(["id", "denoised", "path"]) \
            .map_batches(export_batch, fn_kwargs=dict(export_dir=export_dir, fmt=fmt, quality=quality,
                                                      overwrite=overwrite, ours=ours))
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for name, path, why in zip(b["name"], b["path"], b["refused"]):
                st = part_stem[str(path)]
                (refused[st] if why else names[st]).append(str(why) if why else str(name))
    for st in todo:
        storage.write_json(commits.export_marker_path(out, st, KIND),
                           {**want, "parts": markers[st]["data"], "names": sorted(names[st]),
                            "refused": refused[st][:SHOW], "refused_count": len(refused[st])})
    # Stale: names a todo group's old export had in this folder that no group's export has now
    now = {n for st in todo for n in names[st]} | {n for st, m in old.items() if st not in names and m
                                                   and m.get("export") == export_dir for n in m.get("names", [])}
    for st in todo:
        m = old[st]
        if m and m.get("export") == export_dir:
            for name in sorted(set(m.get("names", [])) - now):
                storage.delete(storage.join(export_dir, *name.split("/")))
    bad = [r for st in todo for r in refused[st]]
    if bad:
        log.warning("--export: %d image(s) not written (first: %s)", len(bad), bad[0])
    return {"written": sum(len(v) for v in names.values()), "groups": len(todo), "refused": len(bad),
            "first_refused": bad[:SHOW]}
