"""The scoring stage: every method on the same noisy images, side by side, on Ray Data.

Pipeline (one streaming Ray Data pipeline for all noise specs and methods)::

    read_shards -> select_rows            keep the images to score (--limit, tuning hold-out), PNG bytes
                -> repartition            blocks of batch_size rows (small shards are one block each)
                -> noisy_batch            decode, and emit one row per
                                          (image, noise spec): clean, noisy (add_noise_batch with
                                          seed + id, so every method sees the same pixels), and the
                                          noisy input's own PSNR/SSIM (the "noisy" row)
                -> baseline_batch  x M    one task stage per classical method (pure batch function):
                                          adds METHOD__psnr/ssim/sec/hash columns
                -> repartition            (stops Ray fusing the task stages into the model actors)
                -> ModelScorer            one actor stage for all model dirs (each actor loads
                                          every model once; actors sized from the cluster)
                -> select id, noise, *__psnr/ssim/sec/hash  -> driver

The driver only ever holds those small per-image rows (plus the handful of images it denoises
itself for the comparison picture), aggregates them per (noise, method), and writes the report.

Every stage records a hash of the noisy input it actually received (``METHOD__hash``); the driver
checks they all equal the noise stage's hash, so "every method saw exactly the same noisy pixels"
is verified on every run, not assumed.

Classical parameters are tuned (see :mod:`dae.baselines`) on a tuning set that never overlaps the
scored images: the first ``tune_images`` images of another split (val, else train) or, when the
data has no other split, the first ``tune_images`` images of the scored split, which are then
left out of scoring (the report says which).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import baselines, shards, storage
from .noise import NoiseSpec, add_noise_batch

log = logging.getLogger("dae")

NOISY = "noisy"  # the method key of the unprocessed noisy input
METRICS = ("psnr", "ssim", "sec", "hash")


@dataclass(frozen=True)
class EvaluateConfig:
    data: str = field(default="", metadata={"help": "shard root (ROOT/SPLIT/*.parquet), a split dir, "
                                                    "a .parquet file, or a URI"})
    split: str = field(default="test", metadata={"help": "split of --data to score"})
    out: str = field(default="", metadata={"help": "output directory or URI for report.md/json, comparison.png"})
    noise: tuple = field(default=("gaussian:0.1", "gaussian:0.5", "salt_pepper:0.2"),
                         metadata={"help": "noise specs, each scored separately"})
    models: tuple = field(default=(), metadata={"help": "model directories (config.json + model.safetensors)"})
    baselines: tuple = field(default=baselines.DEFAULT_BASELINES,
                             metadata={"help": f"classical methods, of: {', '.join(baselines.BASELINES)}"})
    limit: int = field(default=0, metadata={"help": "score only the first N images (file order); 0 = all"})
    seed: int = field(default=0, metadata={"help": "noise seed (noise of an image depends on seed + id only)"})
    bm3d_limit: int = field(default=100, metadata={"help": "BM3D (~1 s/image) scores only the first N scored "
                                                           "images; 0 = all"})
    tune_images: int = field(default=32, metadata={"help": "images in the tuning set for classical "
                                                           "parameters; 0 = no tuning (defaults)"})
    tune_split: str = field(default="", metadata={"help": "split to tune on; '' = val, else train, else "
                                                          "hold out the first tune_images of --split"})
    picture_images: int = field(default=8, metadata={"help": "images per row in comparison.png"})
    batch_size: int = field(default=64, metadata={"help": "rows per Ray Data batch"})
    model_actors: int = field(default=0, metadata={"help": "model actors; 0 = sized from the cluster"})
    device: str = field(default="auto", metadata={"help": "model device", "choices": ("auto", "cpu", "cuda")})


# ---------------------------------------------------------------- small pure helpers


def array_hash(a: np.ndarray) -> int:
    """A 63-bit content hash of a float32 image (shape included): cheap proof two stages saw the
    same pixels."""
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    h = hashlib.blake2b(repr(a.shape).encode(), digest_size=8)
    h.update(a.tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


def score_images(preds: Sequence[np.ndarray], cleans: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (psnr, ssim) float64 arrays; images of equal shape are scored as one batch."""
    from .metrics import psnr, ssim

    n = len(preds)
    p_out, s_out = np.empty(n), np.empty(n)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(preds):
        groups.setdefault(tuple(np.shape(p)), []).append(i)
    for idx in groups.values():
        p = np.stack([preds[i] for i in idx])
        c = np.stack([cleans[i] for i in idx])
        p_out[idx] = psnr(p, c).numpy()
        s_out[idx] = ssim(p, c).numpy()
    return p_out, s_out


def _rows(col) -> list:
    """A batch column as a list of per-row arrays (works for (B, H, W, C) and ragged object arrays)."""
    return list(col)


def _as_array(images: list[np.ndarray]) -> np.ndarray:
    return shards.stack_or_ragged(images)


# ---------------------------------------------------------------- Ray Data stages (pure batch fns)


def select_rows(batch: dict, keep: set | None = None, drop: set | None = None) -> dict:
    """Shard rows whose id is in ``keep`` (when given) and not in ``drop``: the --limit and the
    tuning hold-out, applied to the PNG bytes before anything is decoded."""
    ids = [str(i) for i in batch["id"]]
    sel = np.array([(keep is None or x in keep) and (drop is None or x not in drop) for x in ids], dtype=bool)
    return {k: np.asarray(v)[sel] for k, v in batch.items()}


def noisy_batch(batch: dict, specs: Sequence[str], seed: int) -> dict:
    """Shard rows (PNG bytes) -> one row per (image, noise spec) with clean, noisy and the noisy
    input's metrics (the "noisy" method)."""
    ids = [str(i) for i in batch["id"]]
    clean = [shards.to_float(shards.decode_png(b)) for b in batch["image"]]
    out: dict[str, list] = {"id": [], "noise": [], "clean": [], "noisy": []}
    for spec in specs:
        noisy = add_noise_batch(clean, ids, spec, seed)
        out["id"] += ids
        out["noise"] += [str(spec)] * len(ids)
        out["clean"] += clean
        out["noisy"] += list(noisy)
    p, s = score_images(out["noisy"], out["clean"]) if out["id"] else (np.empty(0), np.empty(0))
    hashes = np.array([array_hash(x) for x in out["noisy"]], dtype=np.int64)
    return {
        "id": np.array(out["id"], dtype=object),
        "noise": np.array(out["noise"], dtype=object),
        "clean": _as_array(out["clean"]) if out["id"] else np.empty((0, 1, 1, 1), np.float32),
        "noisy": _as_array(out["noisy"]) if out["id"] else np.empty((0, 1, 1, 1), np.float32),
        f"{NOISY}__psnr": p, f"{NOISY}__ssim": s,
        f"{NOISY}__sec": np.zeros(len(out["id"])), f"{NOISY}__hash": hashes,
    }


def baseline_batch(batch: dict, method: str, params: dict, subset: set | None = None) -> dict:
    """Adds METHOD__psnr/ssim/sec/hash for one classical method. ``params``: {noise spec: params}.
    Rows outside ``subset`` (when given: BM3D's limit) get NaN and hash -1 and are not scored."""
    ids, specs = batch["id"], batch["noise"]
    noisy, clean = _rows(batch["noisy"]), _rows(batch["clean"])
    n = len(ids)
    sec = np.full(n, np.nan)
    hashes = np.full(n, -1, dtype=np.int64)
    done, outs = [], []
    for i in range(n):
        if subset is not None and str(ids[i]) not in subset:
            continue
        hashes[i] = array_hash(noisy[i])
        t0 = time.perf_counter()
        sigma = baselines.noise_sigma(str(specs[i]), noisy[i])
        outs.append(baselines.apply(method, noisy[i], sigma, params[str(specs[i])]))
        sec[i] = time.perf_counter() - t0
        done.append(i)
    p, s = np.full(n, np.nan), np.full(n, np.nan)
    if done:
        dp, ds = score_images(outs, [clean[i] for i in done])
        p[done], s[done] = dp, ds
    return {**batch, f"{method}__psnr": p, f"{method}__ssim": s, f"{method}__sec": sec,
            f"{method}__hash": hashes}


class ModelScorer:
    """Ray Data actor: loads every model once, adds KEY__psnr/ssim/sec/hash for each.

    ``models``: [(key, model_dir)]. The device is CUDA when this actor was given a GPU (and
    ``device`` allows it), else CPU with torch threads matched to the actor's CPUs.
    """

    def __init__(self, models: Sequence[tuple[str, str]], device: str = "auto", threads: int = 1,
                 chunk: int = 256):
        import torch

        from .checkpoint import load_model

        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if use_cuda else "cpu")
        if not use_cuda:
            torch.set_num_threads(max(1, int(threads)))
        self.models = [(key, load_model(path, self.device)[0]) for key, path in models]
        self.chunk = chunk

    def _run(self, model, images: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        import torch

        t0 = time.perf_counter()
        with torch.inference_mode():
            # Same-shape images go through together; ragged ones one at a time.
            groups: dict[tuple, list[int]] = {}
            for i, im in enumerate(images):
                groups.setdefault(im.shape, []).append(i)
            res: dict[int, np.ndarray] = {}
            for shape, idx in groups.items():
                if shape[2] != model.channels:
                    raise ValueError(f"model {model.name} takes {model.channels}-channel images, got an "
                                     f"image of shape {shape}")
                for k in range(0, len(idx), self.chunk):
                    part = idx[k:k + self.chunk]
                    x = torch.from_numpy(np.stack([images[i] for i in part])).permute(0, 3, 1, 2)
                    y = model(x.to(self.device)).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
                    for j, i in enumerate(part):
                        res[i] = y[j]
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        outs = [res[i] for i in range(len(images))]
        return outs, time.perf_counter() - t0

    def __call__(self, batch: dict) -> dict:
        noisy, clean = _rows(batch["noisy"]), _rows(batch["clean"])
        n = len(noisy)
        out = dict(batch)
        hashes = np.array([array_hash(x) for x in noisy], dtype=np.int64)
        for key, model in self.models:
            preds, secs = self._run(model, noisy)
            p, s = score_images(preds, clean) if n else (np.empty(0), np.empty(0))
            out.update({f"{key}__psnr": p, f"{key}__ssim": s, f"{key}__sec": np.full(n, secs / max(n, 1)),
                        f"{key}__hash": hashes})
        return out


def _tune_fn(name: str, clean: list, noisy: list, sigmas: list) -> dict:
    return baselines.tune(name, clean, noisy, sigmas)


# ---------------------------------------------------------------- data selection (driver, cheap)


def scored_files(root: str, split: str) -> list[str]:
    """Shards of ``split`` under ``root``; a root holding .parquet files directly (no split dirs),
    or a single .parquet file/URI, is taken as is."""
    files = shards.list_shards(root, split)
    if not files and not str(root).endswith(".parquet"):
        files = storage.list_files(root, ".parquet")
    if not files:
        raise FileNotFoundError(f"no .parquet shards under {shards.split_dir(root, split)} (nor directly in {root})")
    return shards.validate_shards(files)


def file_rows(path: str) -> int:
    fs, p = storage.resolve(path)
    return pq.read_metadata(p, filesystem=fs).num_rows


def head_rows(files: Sequence[str], n: int, columns=("id",)) -> tuple[list[dict], list[str]]:
    """The first ``n`` rows in file order (only ``columns``), and the files they came from."""
    rows: list[dict] = []
    used: list[str] = []
    for f in files:
        if len(rows) >= n:
            break
        rows += shards.read_shard(f, list(columns)).to_pylist()[: n - len(rows)]
        used.append(f)
    return rows, used


def _decode_rows(rows: list[dict]) -> list[np.ndarray]:
    return [shards.to_float(shards.decode_png(r["image"])) for r in rows]


# ---------------------------------------------------------------- the job


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", s).strip("_")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "ray", "numpy", "scikit-image", "scipy", "PyWavelets", "bm3d", "pyarrow", "dae"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# Directory names the jobs give every model dir (jobs.train writes OUT/best_model): the run's
# directory (the parent) names the model instead.
_GENERIC_DIR_NAMES = {"model", "best_model", "final_model", "checkpoint", "last_model"}


def _model_entries(dirs: Sequence[str], taken: set[str]) -> list[dict]:
    """[{key, name, dir, config}] with unique display names (directory name, else config model)."""
    from .checkpoint import load_config, weights_digest

    entries = []
    names = set(taken)
    for i, d in enumerate(dirs):
        cfg = load_config(d)
        path = str(d).rstrip("/")
        base = os.path.basename(path)
        if base in _GENERIC_DIR_NAMES:  # runs/unet-g05/best_model -> "unet-g05"
            base = os.path.basename(os.path.dirname(path)) or base
        base = base or cfg.get("model", f"model{i}")
        name = base
        if name in names:
            name = f"{base}-{cfg.get('model', i)}"
        k = 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.add(name)
        entries.append({"key": f"model{i}", "name": name, "dir": str(d), "config": cfg, "weights": weights_digest(d)})
    return entries


def _stats(v: np.ndarray) -> tuple[float | None, float | None]:
    v = v[np.isfinite(v)]
    if not len(v):
        return None, None
    return float(np.mean(v)), float(np.std(v))


def run(cfg: EvaluateConfig, command: str) -> dict:
    """Score everything; write report.md, report.json, comparison*.png, per_image.parquet under
    ``cfg.out``. Returns the report dict."""
    import ray

    from . import raylib, viz
    from .jobutil import Progress, save_resolved_config

    if not cfg.data:
        raise ValueError("--data is required (a shard root, split dir, .parquet file or URI)")
    if not cfg.out:
        raise ValueError("--out is required (a directory or URI for the report)")
    if not cfg.noise:
        raise ValueError("give at least one --noise spec (e.g. gaussian:0.5)")
    specs = [str(NoiseSpec.parse(s)) for s in cfg.noise]
    if len(set(specs)) != len(specs):
        raise ValueError(f"duplicate noise specs in {list(cfg.noise)}")
    names = baselines.validate_names(cfg.baselines)
    for n, lim in (("limit", cfg.limit), ("bm3d_limit", cfg.bm3d_limit), ("tune_images", cfg.tune_images),
                   ("picture_images", cfg.picture_images)):
        if lim < 0:
            raise ValueError(f"{n} must be >= 0, got {lim}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    storage.check_access(cfg.data, must_exist=True)  # fail before any work, naming the cause
    for m in cfg.models:
        storage.check_access(m, must_exist=True)
    storage.check_access(cfg.out, write=True)
    t_start = time.perf_counter()

    # Which classical methods can run here; a missing optional one is skipped with the reason.
    skipped: dict[str, str] = {}
    for n in names:
        ok, why = baselines.availability(n)
        if not ok:
            skipped[n] = why
    run_baselines = [n for n in names if n not in skipped]
    models = _model_entries(cfg.models, {NOISY, *baselines.BASELINES})

    # ---- select the images (driver reads ids only)
    files = scored_files(cfg.data, cfg.split)
    total_rows = sum(file_rows(f) for f in files)
    tune_source, tune_files = "none", []
    if cfg.tune_images and any(baselines.get_baseline(n).grid for n in run_baselines):
        cands = [cfg.tune_split] if cfg.tune_split else ["val", "train"]
        for c in cands:
            if c == cfg.split and not str(cfg.data).endswith(".parquet"):
                continue
            try:
                tune_files = shards.list_shards(cfg.data, c) if not str(cfg.data).endswith(".parquet") else []
            except Exception:
                tune_files = []
            if tune_files:
                tune_source = c
                break
        if not tune_files:
            if cfg.tune_split and cfg.tune_split != cfg.split:
                raise FileNotFoundError(f"--tune-split {cfg.tune_split!r}: no shards under "
                                        f"{shards.split_dir(cfg.data, cfg.tune_split)}")
            tune_source = "holdout"
    holdout_n = cfg.tune_images if tune_source == "holdout" else 0
    avail = total_rows - holdout_n
    if avail <= 0:
        raise ValueError(f"{cfg.data} split {cfg.split!r} has {total_rows} images, none left to score after "
                         f"holding out {holdout_n} for tuning (give --tune-split or --tune-images 0)")
    n_score = min(cfg.limit, avail) if cfg.limit else avail
    bm3d_n = min(cfg.bm3d_limit, n_score) if cfg.bm3d_limit else n_score
    need = holdout_n + max(n_score if cfg.limit else 0, bm3d_n if "bm3d" in run_baselines else 0,
                           min(cfg.picture_images, n_score))
    head, head_files = head_rows(files, need, ("id", "channels"))
    head_ids = [r["id"] for r in head]
    hold_ids = head_ids[:holdout_n]
    scored_head = head_ids[holdout_n:]
    keep = set(scored_head[:n_score]) if cfg.limit else None
    drop = set(hold_ids) or None
    read_files = head_files if cfg.limit else files
    bm3d_subset = set(scored_head[:bm3d_n]) if ("bm3d" in run_baselines and bm3d_n < n_score) else None
    pic_ids = scored_head[: min(cfg.picture_images, n_score)]

    channels = sorted({int(r["channels"]) for r in head})
    for m in models:
        mc = int(m["config"].get("channels", 0))
        if [mc] != channels:
            raise ValueError(f"model {m['name']} ({m['dir']}) takes {mc}-channel images but the data "
                             f"{cfg.data} has {'/'.join(map(str, channels))}-channel images; evaluate it on "
                             f"data with {mc} channel(s)")

    raylib.init_ray()
    log.info("evaluate: %d images x %d noise specs, baselines %s%s, models %s", n_score, len(specs),
             run_baselines, f" (skipped: {sorted(skipped)})" if skipped else "", [m["name"] for m in models])

    # ---- tuning (on images that are never scored)
    params: dict[str, dict[str, dict]] = {n: {} for n in run_baselines}
    tuning: dict[str, Any] = {"source": tune_source, "images": 0, "ids": [], "chosen": {}}
    tune_rows: list[dict] = []
    if tune_source == "holdout":
        tune_rows = [r for r in head_rows(files, holdout_n, ("id", "image"))[0]]
    elif tune_source != "none":
        tune_rows = head_rows(tune_files, cfg.tune_images, ("id", "image"))[0]
    if tune_rows:
        t_clean = _decode_rows(tune_rows)
        t_ids = [r["id"] for r in tune_rows]
        tuning.update(images=len(t_ids), ids=t_ids)
        task = ray.remote(num_cpus=1)(_tune_fn)
        pending = {}
        for spec in specs:
            t_noisy = list(add_noise_batch(t_clean, t_ids, spec, cfg.seed))
            sig = [baselines.noise_sigma(spec, x) for x in t_noisy]
            c_ref, n_ref = ray.put(t_clean), ray.put(t_noisy)
            for n in run_baselines:
                if baselines.get_baseline(n).grid:
                    pending[(spec, n)] = task.remote(n, c_ref, n_ref, sig)
        log.info("tuning %d (noise, method) pairs on %d %s images", len(pending), len(t_ids), tune_source)
        for (spec, n), ref in pending.items():
            res = ray.get(ref)
            params[n][spec] = res["params"]
            tuning["chosen"].setdefault(spec, {})[n] = res
    for n in run_baselines:
        for spec in specs:
            params[n].setdefault(spec, baselines.get_baseline(n).params())

    # ---- the pipeline
    from .data import read_shards

    ds = read_shards(cfg.data, files=read_files, columns=["id", "image"])
    if keep is not None or drop is not None:
        ds = ds.map_batches(select_rows, batch_format="numpy", fn_kwargs={"keep": keep, "drop": drop})
    # Small shard files are read as one block by one task; split them so the CPU-heavy stages
    # below run on every CPU (streaming: no all-to-all barrier).
    ds = ds.repartition(target_num_rows_per_block=cfg.batch_size)
    ds = ds.map_batches(noisy_batch, batch_size=cfg.batch_size, batch_format="numpy",
                        fn_kwargs={"specs": specs, "seed": cfg.seed})
    for n in run_baselines:
        sub = bm3d_subset if n == "bm3d" else None
        ds = ds.map_batches(baseline_batch, batch_size=8 if n == "bm3d" else cfg.batch_size,
                            batch_format="numpy", fn_kwargs={"method": n, "params": params[n], "subset": sub})
    actors_info: dict[str, Any] = {}
    if models:
        from ray.data import ActorPoolStrategy

        cpus, gpus = raylib.cluster_cpus(), raylib.cluster_gpus()
        use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and gpus >= 1)
        if cfg.device == "cuda" and gpus < 1:
            raise ValueError("--device cuda but the Ray cluster has no GPU")
        # An actor holds its CPU for the whole run: leave at least one CPU to the read, noise and
        # classical tasks, or the pipeline waits forever (2 CPUs, 2 actors = silent deadlock).
        actor_cpus = 1 if cpus >= 2 else 0
        max_actors = int(gpus) if use_gpu else max(1, int(cpus) - 1)
        n_act = cfg.model_actors or (int(gpus) if use_gpu else max(1, min(4, int(cpus) // 4)))
        if n_act > max_actors:
            log.warning("model_actors %d > %d the cluster can hold next to the other stages; using %d",
                        n_act, max_actors, max_actors)
            n_act = max_actors
        actors_info = {"actors": n_act, "gpu": use_gpu, "cpus_per_actor": actor_cpus}
        # Without this Ray fuses every task stage above into the model actors, and the classical
        # methods would run serially in n_act actors instead of as tasks on every free CPU (Ray
        # never fuses anything downstream of a streaming repartition).
        ds = ds.repartition(target_num_rows_per_block=cfg.batch_size * len(specs))
        ds = ds.map_batches(
            ModelScorer, batch_size=cfg.batch_size, batch_format="numpy",
            fn_constructor_kwargs={"models": [(m["key"], m["dir"]) for m in models],
                                   "device": "cuda" if use_gpu else "cpu", "threads": max(1, actor_cpus)},
            compute=ActorPoolStrategy(size=n_act), num_cpus=actor_cpus, num_gpus=1 if use_gpu else 0)

    keys = [NOISY, *run_baselines, *[m["key"] for m in models]]
    cols = ["id", "noise", *[f"{k}__{m}" for k in keys for m in METRICS]]
    ds = ds.select_columns(cols)
    prog = Progress("evaluate", total=n_score * len(specs), unit="rows")
    tables = []
    for b in ds.iter_batches(batch_format="pyarrow", batch_size=1024):
        tables.append(b)
        prog.update(b.num_rows)
    prog.report()
    wall = time.perf_counter() - t_start
    table = pa.concat_tables(tables) if tables else pa.table({c: [] for c in cols})
    cols_np = {c: table.column(c).to_numpy(zero_copy_only=False) for c in cols}
    if len(table) != n_score * len(specs):
        raise RuntimeError(f"pipeline returned {len(table)} rows, expected {n_score} images x {len(specs)} specs")

    # ---- aggregate per (noise, method)
    display = {NOISY: NOISY, **{n: n for n in names}, **{m["key"]: m["name"] for m in models}}
    kind = {NOISY: "input", **{n: "classical" for n in names}, **{m["key"]: "model" for m in models}}
    results, long_rows = [], {"id": [], "noise": [], "method": [], "psnr": [], "ssim": [], "sec": [], "input_hash": []}
    same_input: dict[str, dict] = {}
    ordered = [NOISY, *names, *[m["key"] for m in models]]
    noise_col = cols_np["noise"].astype(str)
    bm3d_mask_all = np.isin(cols_np["id"].astype(str), list(bm3d_subset)) if bm3d_subset else None
    for spec in specs:
        sel = noise_col == spec
        ref_hash = cols_np[f"{NOISY}__hash"][sel]
        mismatches = {}
        for k in ordered:
            entry: dict[str, Any] = {"noise": spec, "method": display[k], "kind": kind[k]}
            if k in skipped:
                entry.update(status="skipped", reason=skipped[k], images=0, psnr_mean=None, psnr_std=None,
                             ssim_mean=None, ssim_std=None, sec_per_image=None)
                results.append(entry)
                continue
            p, s = cols_np[f"{k}__psnr"][sel], cols_np[f"{k}__ssim"][sel]
            sec, h = cols_np[f"{k}__sec"][sel], cols_np[f"{k}__hash"][sel]
            ok = np.isfinite(p)
            bad = int(np.sum(h[ok] != ref_hash[ok]))
            if bad:
                mismatches[display[k]] = bad
            pm, ps = _stats(p)
            sm, ss = _stats(s)
            entry.update(status="ok", images=int(ok.sum()), psnr_mean=pm, psnr_std=ps, ssim_mean=sm, ssim_std=ss,
                         sec_per_image=None if k == NOISY else _stats(sec)[0])
            if k in params:
                entry["params"] = params[k][spec]
            if kind[k] == "model":
                m = next(m for m in models if m["key"] == k)
                entry.update(model=m["config"].get("model"), model_dir=m["dir"],
                             trained_noise=m["config"].get("noise"))
            if bm3d_mask_all is not None:
                msk = bm3d_mask_all[sel] & ok
                entry["bm3d_subset"] = {"images": int(msk.sum()), "psnr_mean": _stats(p[msk])[0],
                                        "ssim_mean": _stats(s[msk])[0]}
            results.append(entry)
            n_ok = int(ok.sum())
            long_rows["id"] += list(cols_np["id"][sel][ok].astype(str))
            long_rows["noise"] += [spec] * n_ok
            long_rows["method"] += [display[k]] * n_ok
            long_rows["psnr"] += list(p[ok])
            long_rows["ssim"] += list(s[ok])
            long_rows["sec"] += list(np.nan_to_num(sec[ok]))
            long_rows["input_hash"] += list(h[ok])
        same_input[spec] = {"identical": not mismatches, "mismatched_images": mismatches}
    if any(not v["identical"] for v in same_input.values()):
        log.error("methods received different noisy inputs: %s", same_input)

    # ---- the picture: the same fixed images, one row per method, per noise spec
    pics: dict[str, str] = {}
    picture_check: dict[str, bool] = {}
    if pic_ids:
        prow = {r["id"]: r for r in head_rows(files, holdout_n + len(pic_ids), ("id", "image"))[0]}
        pclean = _decode_rows([prow[i] for i in pic_ids])
        loaded = []
        if models:
            import torch

            from .checkpoint import load_model

            loaded = [(m, load_model(m["dir"], "cpu")[0]) for m in models]
        all_rows: list[tuple[str, list]] = [("clean", pclean)]
        for spec in specs:
            pnoisy = list(add_noise_batch(pclean, pic_ids, spec, cfg.seed))
            # The picture is made on the driver; check it starts from the pipeline's exact pixels.
            pic_set = set(pic_ids)
            sel_idx = [i for i in np.nonzero(noise_col == spec)[0] if str(cols_np["id"][i]) in pic_set]
            got = {str(cols_np["id"][i]): int(cols_np[f"{NOISY}__hash"][i]) for i in sel_idx}
            picture_check[spec] = all(got.get(i) == array_hash(x) for i, x in zip(pic_ids, pnoisy))
            rows = [(f"{spec} noisy", pnoisy)]
            for n in run_baselines:
                rows.append((n, [baselines.apply(n, x, baselines.noise_sigma(spec, x), params[n][spec])
                                 for x in pnoisy]))
            for m, model in loaded:
                with torch.inference_mode():
                    outs = []
                    for x in pnoisy:
                        t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
                        outs.append(model(t).clamp(0, 1)[0].permute(1, 2, 0).numpy())
                rows.append((m["name"], outs))
            pics[spec] = viz.save_grid([("clean", pclean), *rows], storage.join(cfg.out, f"comparison_{_slug(spec)}.png"),
                                       label_width=150)
            all_rows += rows
        pics["all"] = viz.save_grid(all_rows, storage.join(cfg.out, "comparison.png"), label_width=150)

    # ---- write
    pq_buf = pa.BufferOutputStream()
    pq.write_table(pa.table({k: pa.array(v) for k, v in long_rows.items()}), pq_buf, compression="zstd")
    storage.write_bytes(storage.join(cfg.out, "per_image.parquet"), pq_buf.getvalue().to_pybytes())
    save_resolved_config(cfg, cfg.out, name="config.resolved.json")
    report = {
        "command": command,
        "versions": package_versions(),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "data": {"root": cfg.data, "split": cfg.split, "files": len(read_files), "rows_in_split": total_rows,
                 "images_scored": n_score, "channels": channels, "selection":
                 f"first {n_score} images in file order" + (f" after the {holdout_n} tuning images" if holdout_n else "")},
        "noise": specs,
        "seed": cfg.seed,
        "methods": [display[k] for k in ordered],
        "skipped": [{"method": n, "reason": r} for n, r in skipped.items()],
        "bm3d": ({"images": bm3d_n, "subset": "first %d scored images (file order)" % bm3d_n}
                 if "bm3d" in run_baselines else None),
        "tuning": tuning,
        "models": [{"name": m["name"], "dir": m["dir"], "model": m["config"].get("model"),
                    "channels": m["config"].get("channels"), "trained_noise": m["config"].get("noise"),
                    "weights": m["weights"]}
                   for m in models],
        "model_actors": actors_info,
        "same_input": same_input,
        "picture_same_input": picture_check,
        "results": results,
        "pictures": pics,
        "wall_seconds": wall,
        "cluster": {"cpus": raylib.cluster_cpus(), "gpus": raylib.cluster_gpus()},
    }
    storage.write_json(storage.join(cfg.out, "report.json"), report)
    storage.write_bytes(storage.join(cfg.out, "report.md"), render_markdown(report).encode())
    log.info("evaluate: wrote %s (%.1f s)", storage.join(cfg.out, "report.md"), wall)
    return report


def _fmt(m, s, digits):
    if m is None:
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _fmt_params(p: dict | None) -> str:
    if not p:
        return ""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())


def render_markdown(r: dict) -> str:
    lines = ["# Denoising evaluation", "",
             f"Data: `{r['data']['root']}` split `{r['data']['split']}`: {r['data']['images_scored']} images "
             f"({r['data']['selection']}), {'/'.join(map(str, r['data']['channels']))} channel(s); seed {r['seed']}.",
             "", "Command:", "", "```", r["command"], "```", ""]
    if r.get("bm3d"):
        lines += [f"BM3D is scored on a subset only: the {r['bm3d']['subset']} (`--bm3d-limit`); the other "
                  "methods on all images. The table after the main ones compares every method on that subset.", ""]
    for s in r["skipped"]:
        lines.append(f"- **{s['method']} skipped**: {s['reason']}")
    if r["skipped"]:
        lines.append("")
    t = r["tuning"]
    if t["source"] == "none":
        lines += ["Classical parameters: defaults (no tuning).", ""]
    else:
        where = ("held out from the scored split (not scored)" if t["source"] == "holdout"
                 else f"from split `{t['source']}`")
        lines += [f"Classical parameters: best mean PSNR over a small grid on {t['images']} tuning images "
                  f"{where}; never the scored images (BM3D: on the first 8 of them, it is slow).", ""]
    lines += ["PSNR in dB (data range 1) and SSIM are per-image values, mean ± std over images (std: ddof=0). "
              "s/image: compute seconds per image inside one worker (models: batched forward / batch size). "
              "sigma = the Gaussian level for gaussian:L, else estimated from each noisy image.", ""]
    for spec in r["noise"]:
        ok = r["same_input"].get(spec, {}).get("identical")
        lines += [f"## {spec}", "",
                  f"Same noisy input for every method (hash check): {'yes' if ok else 'NO: ' + str(r['same_input'][spec])}",
                  "", "| method | kind | PSNR (dB) | SSIM | images | s/image | parameters |",
                  "|---|---|---|---|---|---|---|"]
        for e in r["results"]:
            if e["noise"] != spec:
                continue
            if e["status"] == "skipped":
                lines.append(f"| {e['method']} | {e['kind']} | skipped | skipped | 0 | - | {e['reason']} |")
                continue
            sec = "-" if e["sec_per_image"] is None else f"{e['sec_per_image']:.2e}"
            extra = _fmt_params(e.get("params"))
            if e["kind"] == "model":
                extra = f"{e.get('model')}, trained on {e.get('trained_noise')}"
            lines.append(f"| {e['method']} | {e['kind']} | {_fmt(e['psnr_mean'], e['psnr_std'], 2)} | "
                         f"{_fmt(e['ssim_mean'], e['ssim_std'], 4)} | {e['images']} | {sec} | {extra} |")
        lines.append("")
        if r.get("bm3d"):
            lines += [f"On the BM3D subset ({r['bm3d']['images']} images):", "",
                      "| method | PSNR (dB) | SSIM |", "|---|---|---|"]
            for e in r["results"]:
                if e["noise"] == spec and e["status"] == "ok" and "bm3d_subset" in e:
                    b = e["bm3d_subset"]
                    if b["psnr_mean"] is not None:
                        lines.append(f"| {e['method']} | {b['psnr_mean']:.2f} | {b['ssim_mean']:.4f} |")
            lines.append("")
        pic = r["pictures"].get(spec)
        if pic:
            lines += [f"![{spec}]({os.path.basename(pic)})", ""]
    v = r["versions"]
    lines += ["## Environment", "", ", ".join(f"{k} {val}" for k, val in v.items()), "",
              f"Ray cluster: {r['cluster']['cpus']:g} CPUs, {r['cluster']['gpus']:g} GPUs; wall time "
              f"{r['wall_seconds']:.1f} s.", ""]
    return "\n".join(lines)
