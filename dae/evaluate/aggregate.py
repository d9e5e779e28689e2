"""From the pipeline's rows to the report's numbers: per (noise, method) mean ± std, per image, checks.

Rules:
- The driver only ever holds the small per-image rows (id, noise, and each method's
  psnr/ssim/sec/hash); a pipeline that returns another number of rows than images x noise specs
  is an error, never a partial report.
- Scores are per-image values, mean ± std (ddof=0) over the images a method scored (finite PSNR).
- ``same_input``: per noise spec, whether every method's input hash equals the noise stage's; a
  mismatch is logged as an error and shown in the report, never hidden.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..jobutil import Progress
from .methods import Methods
from .stages import NOISY

log = logging.getLogger("dae")


def collect(ds, columns: list[str], n_images: int, n_specs: int) -> dict[str, np.ndarray]:
    """Runs the pipeline; its columns as numpy arrays (one row per image and noise spec)."""
    prog = Progress("evaluate", total=n_images * n_specs, unit="rows")
    tables = []
    for b in ds.iter_batches(batch_format="pyarrow", batch_size=1024):
        tables.append(b)
        prog.update(b.num_rows)
    prog.finish()
    table = pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns})
    if len(table) != n_images * n_specs:
        raise RuntimeError(f"pipeline returned {len(table)} rows, expected {n_images} images x {n_specs} specs")
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}


def _stats(v: np.ndarray) -> tuple[float | None, float | None]:
    v = v[np.isfinite(v)]
    if not len(v):
        return None, None
    return float(np.mean(v)), float(np.std(v))


@dataclass(frozen=True)
class Scores:
    results: list[dict]  # one entry per (noise, method): the report's tables
    per_image: dict[str, list]  # the columns of per_image.parquet
    same_input: dict[str, dict]  # per noise spec: did every method get the noise stage's pixels


def aggregate(cols: dict[str, np.ndarray], specs: list[str], methods: Methods, params: dict,
              bm3d_subset: set | None) -> Scores:
    """Per (noise, method): mean ± std over images, and the check that every method's input hash
    equals the noise stage's."""
    results: list[dict] = []
    per_image: dict[str, list] = {"id": [], "noise": [], "method": [], "psnr": [], "ssim": [], "sec": [],
                                  "input_hash": []}
    same_input: dict[str, dict] = {}
    noise_col = cols["noise"].astype(str)
    bm3d_mask_all = np.isin(cols["id"].astype(str), list(bm3d_subset)) if bm3d_subset else None
    for spec in specs:
        sel = noise_col == spec
        ref_hash = cols[f"{NOISY}__hash"][sel]
        mismatches = {}
        for k in methods.keys:
            entry: dict[str, Any] = {"noise": spec, "method": methods.display(k), "kind": methods.kind(k)}
            results.append(entry)
            if k in methods.skipped:
                entry.update(status="skipped", reason=methods.skipped[k], images=0, psnr_mean=None, psnr_std=None,
                             ssim_mean=None, ssim_std=None, sec_per_image=None)
                continue
            p, s = cols[f"{k}__psnr"][sel], cols[f"{k}__ssim"][sel]
            sec, h = cols[f"{k}__sec"][sel], cols[f"{k}__hash"][sel]
            ok = np.isfinite(p)
            bad = int(np.sum(h[ok] != ref_hash[ok]))
            if bad:
                mismatches[methods.display(k)] = bad
            pm, ps = _stats(p)
            sm, ss = _stats(s)
            entry.update(status="ok", images=int(ok.sum()), psnr_mean=pm, psnr_std=ps, ssim_mean=sm, ssim_std=ss,
                         sec_per_image=None if k == NOISY else _stats(sec)[0])
            if k in params:
                entry["params"] = params[k][spec]
            if m := methods.model(k):
                entry.update(model=m["config"].get("model"), model_dir=m["dir"],
                             trained_noise=m["config"].get("noise"))
            if bm3d_mask_all is not None:
                msk = bm3d_mask_all[sel] & ok
                entry["bm3d_subset"] = {"images": int(msk.sum()), "psnr_mean": _stats(p[msk])[0],
                                        "ssim_mean": _stats(s[msk])[0]}
            n_ok = int(ok.sum())
            per_image["id"] += list(cols["id"][sel][ok].astype(str))
            per_image["noise"] += [spec] * n_ok
            per_image["method"] += [methods.display(k)] * n_ok
            per_image["psnr"] += list(p[ok])
            per_image["ssim"] += list(s[ok])
            per_image["sec"] += list(np.nan_to_num(sec[ok]))
            per_image["input_hash"] += list(h[ok])
        same_input[spec] = {"identical": not mismatches, "mismatched_images": mismatches}
    if any(not v["identical"] for v in same_input.values()):
        log.error("methods received different noisy inputs: %s", same_input)
    return Scores(results, per_image, same_input)
