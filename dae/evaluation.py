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
                                          every model once; the pool sized by
                                          dae.inference.plan_actors, as jobs.denoise's)
                -> select id, noise, *__psnr/ssim/sec/hash  -> driver

Models run as in jobs.denoise, through :func:`dae.inference.denoise_images` (tiles, fixed-size
zero-padded forward passes, bf16 on GPU): a model is scored on what the denoise job would output,
and the comparison picture shows those very outputs.

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
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import baselines, shards, storage
from .config import command_line
from .jobutil import Progress, save_resolved_config, slug
from .noise import NoiseSpec, add_noise_batch, noise_sigmas

log = logging.getLogger("dae")

NOISY = "noisy"  # the method key of the unprocessed noisy input
METRICS = ("psnr", "ssim", "sec", "hash")


@dataclass(frozen=True)
class EvaluateConfig:
    data: str = field(default="", metadata={"help": "shard root (ROOT/SPLIT/*.parquet), a split dir, "
                                                    "a .parquet file, or a URI"})
    split: str = field(default="test", metadata={"help": "split of --data to score"})
    out: str = field(default="", metadata={"help": "output directory or URI for report.md/json, comparison.png"})
    # The three lists are flags of space-separated words (nargs): `--noise gaussian:0.1 gaussian:0.5`.
    noise: tuple = field(default=("gaussian:0.1", "gaussian:0.5", "salt_pepper:0.2"),
                         metadata={"help": "noise specs, each scored separately", "nargs": "+"})
    models: tuple = field(default=(), metadata={"help": "model directories (config.json + model.safetensors); "
                                                        "named by directory", "nargs": "*"})
    ensemble: tuple = field(default=(1,), metadata={
        "help": "self-ensemble sizes every model is scored at: 1 plain; 2, 4 or 8 flips/rotations averaged "
                "(N x the time), a row 'NAME xN' each", "nargs": "+", "type": int})
    baselines: tuple = field(default=baselines.DEFAULT_BASELINES,
                             metadata={"help": f"classical methods, of: {', '.join(baselines.BASELINES)} "
                                               "(bm3d only if installed)", "nargs": "*"})
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
    out: dict[str, list] = {"id": [], "noise": [], "clean": [], "noisy": [], "sigma": []}
    for spec in specs:
        noisy = add_noise_batch(clean, ids, spec, seed)
        out["sigma"] += noise_sigmas(ids, spec, seed).tolist()  # told to conditioned models: the true level
        out["id"] += ids
        out["noise"] += [str(spec)] * len(ids)
        out["clean"] += clean
        out["noisy"] += list(noisy)
    p, s = score_images(out["noisy"], out["clean"]) if out["id"] else (np.empty(0), np.empty(0))
    hashes = np.array([array_hash(x) for x in out["noisy"]], dtype=np.int64)
    return {
        "id": np.array(out["id"], dtype=object),
        "noise": np.array(out["noise"], dtype=object),
        "sigma": np.array(out["sigma"], dtype=np.float32),
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


# ---------------------------------------------------------------- the model actor


def denoise(den, images: Sequence[np.ndarray], sigmas: Sequence[float], ensemble: int = 1) -> list[np.ndarray]:
    """A model's outputs as scored and pictured: :meth:`dae.inference.Denoiser.run` (the denoise
    job's tiling and fixed-size forward passes), clipped to [0, 1], the range of every image here
    (models without an output sigmoid overshoot it). A conditioned model is told each image's true
    noise sigma, as the published non-blind tables do (FFDNet, DRUNet). ``ensemble``: the self-ensemble
    size (:func:`dae.inference.denoise_images`)."""
    return [np.clip(y, 0.0, 1.0) for y in den.run(list(images), list(sigmas), ensemble=ensemble)]


class ModelScorer:
    """Ray Data actor: loads every model once (a :class:`dae.inference.Denoiser` each), adds
    KEY__psnr/ssim/sec/hash for each.

    ``models``: [(key, model_dir, self-ensemble size)], a model dir loaded once whatever its sizes;
    ``device`` and ``torch_threads`` from the pool's plan (:func:`plan_model_actors`).
    """

    def __init__(self, models: Sequence[tuple[str, str, int]], device: str = "cpu", torch_threads: int = 1):
        from .inference import Denoiser

        loaded = {path: Denoiser(path, device=device, torch_threads=torch_threads) for _, path, _ in models}
        self.models = [(key, loaded[path], n) for key, path, n in models]

    def __call__(self, batch: dict) -> dict:
        noisy, clean = _rows(batch["noisy"]), _rows(batch["clean"])
        n = len(noisy)
        out = dict(batch)
        hashes = np.array([array_hash(x) for x in noisy], dtype=np.int64)
        for key, den, n_views in self.models:
            wrong = sorted({x.shape[2] for x in noisy} - {den.channels})
            if wrong:
                raise ValueError(f"model {den.config.get('model')} takes {den.channels}-channel images, got "
                                 f"{'/'.join(map(str, wrong))}-channel ones")
            t0 = time.perf_counter()
            # ends with a copy to host memory: GPU time included
            preds = denoise(den, noisy, batch["sigma"], n_views)
            secs = time.perf_counter() - t0
            p, s = score_images(preds, clean) if n else (np.empty(0), np.empty(0))
            out.update({f"{key}__psnr": p, f"{key}__ssim": s, f"{key}__sec": np.full(n, secs / max(n, 1)),
                        f"{key}__hash": hashes})
        return out


def plan_model_actors(cfg: EvaluateConfig, cpus: float, gpus: float) -> dict:
    """The model actor pool, sized by :func:`dae.inference.plan_actors` as jobs.denoise's is: a fixed
    pool of ``cfg.model_actors`` or, when 0, one actor per GPU, or on CPUs a quarter of them (at most
    4): the classical methods run as CPU tasks beside the pool, so it gets less than denoise's half."""
    from .inference import plan_actors

    plan = plan_actors(cpus, gpus, cfg.device, max_actors=cfg.model_actors)
    if plan["device"] == "cpu" and not cfg.model_actors:
        plan = plan_actors(cpus, gpus, "cpu", max_actors=max(1, min(4, int(cpus) // 4)))
    for note in plan.pop("notes"):
        log.warning("model actors: %s", note)
    plan["torch_threads"] = max(1, int(plan["actor_cpus"]))
    return plan


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


@dataclass(frozen=True)
class Selection:
    """The images of a run, by id (the driver reads ids and channel counts only): the scored ones,
    the tuning ones, BM3D's subset and the picture's."""

    files: list[str]  # shards of the scored split
    read_files: list[str]  # the ones the pipeline reads (with --limit only those holding the head)
    total_rows: int  # images in the split
    n_score: int  # images scored
    holdout_n: int  # first images of the split held out to tune on, never scored
    keep: set | None  # --limit: the scored ids (None: every id)
    drop: set | None  # the held-out tuning ids
    bm3d_n: int  # images BM3D scores
    bm3d_subset: set | None  # their ids, when fewer than all
    picture_ids: list[str]
    channels: list[int]  # channel counts of the images read here
    tune_source: str  # "none", "holdout" or the split tuned on
    tune_files: list[str]


def _tuning_split(cfg: EvaluateConfig, running: Sequence[str]) -> tuple[str, list[str]]:
    """(source, files) of the tuning images: ``--tune-split``, else val, else train, else "holdout"
    (the head of the scored split); "none" when nothing is tuned."""
    if not cfg.tune_images or not any(baselines.get_baseline(n).grid for n in running):
        return "none", []
    is_file = str(cfg.data).endswith(".parquet")
    for c in [cfg.tune_split] if cfg.tune_split else ["val", "train"]:
        if c == cfg.split and not is_file:
            continue
        try:
            files = shards.list_shards(cfg.data, c) if not is_file else []
        except Exception:
            files = []
        if files:
            return c, files
    if cfg.tune_split and cfg.tune_split != cfg.split:
        raise FileNotFoundError(f"--tune-split {cfg.tune_split!r}: no shards under "
                                f"{shards.split_dir(cfg.data, cfg.tune_split)}")
    return "holdout", []


def select_images(cfg: EvaluateConfig, running: Sequence[str]) -> Selection:
    """Which images are scored (the first ``limit`` in file order, after any tuning hold-out), tuned
    on, scored by BM3D and shown in the picture; ``running``: the classical methods that run."""
    files = scored_files(cfg.data, cfg.split)
    if files and shards.is_noisy_only(files):
        raise ValueError(f"{cfg.data} holds noisy images with no clean version (prepared with --noisy): evaluate "
                         "scores against clean images; denoise them with jobs.denoise and look at its samples.png")
    total_rows = sum(file_rows(f) for f in files)
    tune_source, tune_files = _tuning_split(cfg, running)
    holdout_n = cfg.tune_images if tune_source == "holdout" else 0
    avail = total_rows - holdout_n
    if avail <= 0:
        raise ValueError(f"{cfg.data} split {cfg.split!r} has {total_rows} images, none left to score after "
                         f"holding out {holdout_n} for tuning (give --tune-split or --tune-images 0)")
    n_score = min(cfg.limit, avail) if cfg.limit else avail
    bm3d_n = min(cfg.bm3d_limit, n_score) if cfg.bm3d_limit else n_score
    need = holdout_n + max(n_score if cfg.limit else 0, bm3d_n if "bm3d" in running else 0,
                           min(cfg.picture_images, n_score))
    head, head_files = head_rows(files, need, ("id", "channels"))
    head_ids = [r["id"] for r in head]
    scored_head = head_ids[holdout_n:]
    return Selection(
        files=files, read_files=head_files if cfg.limit else files, total_rows=total_rows, n_score=n_score,
        holdout_n=holdout_n, keep=set(scored_head[:n_score]) if cfg.limit else None,
        drop=set(head_ids[:holdout_n]) or None, bm3d_n=bm3d_n,
        bm3d_subset=set(scored_head[:bm3d_n]) if ("bm3d" in running and bm3d_n < n_score) else None,
        picture_ids=scored_head[: min(cfg.picture_images, n_score)],
        channels=sorted({int(r["channels"]) for r in head}), tune_source=tune_source, tune_files=tune_files)


# ---------------------------------------------------------------- the job


def report_command(cfg: EvaluateConfig, argv: Sequence[str] | None = None) -> str:
    """The report's command: the one that reruns ``cfg``, every field spelled out; run from a shell
    (``argv``), what was typed, then that resolved equivalent."""
    resolved = command_line("jobs.evaluate", cfg, full=True)
    if argv is None:
        return resolved
    return f"{shlex.join(['python', '-m', 'jobs.evaluate', *argv])}\n# resolved: {resolved}"


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


def _model_entries(dirs: Sequence[str], taken: set[str], ensembles: Sequence[int] = (1,)) -> list[dict]:
    """[{key, name, dir, config, weights, ensemble}] with unique display names (directory name, else
    config model), one per model and self-ensemble size ("NAME x8")."""
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
        digest = weights_digest(d)
        for n in ensembles:
            entries.append({"key": f"model{i}" if n == 1 else f"model{i}x{n}",
                            "name": name if n == 1 else f"{name} x{n}", "dir": str(d), "config": cfg,
                            "weights": digest, "ensemble": n})
    return entries


@dataclass(frozen=True)
class Methods:
    """What is scored, in report order: the noisy input, the classical methods, the models."""

    classical: list[str]  # asked for
    skipped: dict[str, str]  # classical methods that cannot run here -> why
    models: list[dict]  # _model_entries

    @classmethod
    def resolve(cls, names: Sequence[str], model_dirs: Sequence[str], ensembles: Sequence[int] = (1,)) -> Methods:
        # A missing optional method is reported as skipped with the reason, never scored as zero.
        skipped = {}
        for n in names:
            ok, why = baselines.availability(n)
            if not ok:
                skipped[n] = why
        return cls(list(names), skipped, _model_entries(model_dirs, {NOISY, *baselines.BASELINES}, ensembles))

    @property
    def running(self) -> list[str]:
        """The classical methods that run."""
        return [n for n in self.classical if n not in self.skipped]

    @property
    def keys(self) -> list[str]:
        """Every method in report order, skipped ones included."""
        return [NOISY, *self.classical, *[m["key"] for m in self.models]]

    @property
    def columns(self) -> list[str]:
        """What the pipeline hands the driver: id, noise, and the metrics of every method that ran."""
        ran = [NOISY, *self.running, *[m["key"] for m in self.models]]
        return ["id", "noise", *[f"{k}__{m}" for k in ran for m in METRICS]]

    def model(self, key: str) -> dict | None:
        return next((m for m in self.models if m["key"] == key), None)

    def display(self, key: str) -> str:
        m = self.model(key)
        return m["name"] if m else key

    def kind(self, key: str) -> str:
        return "input" if key == NOISY else "model" if self.model(key) else "classical"


def check_config(cfg: EvaluateConfig) -> tuple[list[str], list[str]]:
    """(noise specs, classical method names), or a clear error before any work."""
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
    if not cfg.ensemble or len(set(cfg.ensemble)) != len(cfg.ensemble):
        raise ValueError(f"--ensemble takes distinct sizes, got {list(cfg.ensemble)}")
    from .inference import check_ensemble  # (torch: imported when a config is checked, not at import)

    for n in cfg.ensemble:
        check_ensemble(n)
    storage.check_access(cfg.data, must_exist=True)  # fail before any work, naming the cause
    shards.require_prepared(cfg.data)  # a prepare killed half way: refused, not evaluated on part of a split
    for m in cfg.models:
        storage.check_access(m, must_exist=True)
    storage.check_access(cfg.out, write=True)
    return specs, names


def check_model_channels(cfg: EvaluateConfig, models: list[dict], channels: list[int]) -> None:
    for m in models:
        mc = int(m["config"].get("channels", 0))
        if [mc] != channels:
            raise ValueError(f"model {m['name']} ({m['dir']}) takes {mc}-channel images but the data "
                             f"{cfg.data} has {'/'.join(map(str, channels))}-channel images; evaluate it on "
                             f"data with {mc} channel(s)")


def tune_baselines(cfg: EvaluateConfig, sel: Selection, specs: list[str],
                   running: list[str]) -> tuple[dict[str, dict[str, dict]], dict]:
    """({method: {noise spec: params}}, the report's tuning section). Grids are searched as Ray
    tasks on the tuning images, which are never scored; untuned methods keep their defaults."""
    import ray

    params: dict[str, dict[str, dict]] = {n: {} for n in running}
    tuning: dict[str, Any] = {"source": sel.tune_source, "images": 0, "ids": [], "chosen": {}}
    tune_rows: list[dict] = []
    if sel.tune_source == "holdout":
        tune_rows = head_rows(sel.files, sel.holdout_n, ("id", "image"))[0]
    elif sel.tune_source != "none":
        tune_rows = head_rows(sel.tune_files, cfg.tune_images, ("id", "image"))[0]
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
            for n in running:
                if baselines.get_baseline(n).grid:
                    pending[(spec, n)] = task.remote(n, c_ref, n_ref, sig)
        log.info("tuning %d (noise, method) pairs on %d %s images", len(pending), len(t_ids), sel.tune_source)
        for (spec, n), ref in pending.items():
            res = ray.get(ref)
            params[n][spec] = res["params"]
            tuning["chosen"].setdefault(spec, {})[n] = res
    for n in running:
        for spec in specs:
            params[n].setdefault(spec, baselines.get_baseline(n).params())
    return params, tuning


def block_rows(batch_size: int, n_images: int, cpus: float | None = None) -> int:
    """Rows per block of the scoring pipeline: at most ``batch_size``, and few enough that every CPU
    of the cluster gets at least two blocks (the classical methods cost seconds per photo)."""
    if cpus is None:
        import ray

        cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, min(batch_size, math.ceil(n_images / max(2 * cpus, 1))))


def build_dataset(cfg: EvaluateConfig, sel: Selection, specs: list[str], methods: Methods, params: dict,
                  plan: dict | None):
    """The streaming pipeline of the module docstring, ending in ``methods.columns``. ``plan``: the
    model actor pool (:func:`plan_model_actors`), None without models."""
    from .data import read_shards

    # A task never asks for more CPU than a model actor holds, or it may find no node to run on
    # (dae.inference.plan_actors says why); Ray's default of 1 without models.
    task = {"num_cpus": plan["task_cpus"]} if plan else {}
    ds = read_shards(cfg.data, files=sel.read_files, columns=["id", "image"], **task)
    if sel.keep is not None or sel.drop is not None:
        ds = ds.map_batches(select_rows, batch_format="numpy", fn_kwargs={"keep": sel.keep, "drop": sel.drop},
                            **task)
    # Small shard files are read as one block by one task; split them so the CPU-heavy stages
    # below run on every CPU (streaming: no all-to-all barrier): blocks of batch_size rows, smaller
    # when that leaves CPUs idle (68 photos in blocks of 64 ran NLM and BM3D on one of 2 CPUs).
    ds = ds.repartition(target_num_rows_per_block=block_rows(cfg.batch_size, sel.n_score))
    ds = ds.map_batches(noisy_batch, batch_size=cfg.batch_size, batch_format="numpy",
                        fn_kwargs={"specs": specs, "seed": cfg.seed}, **task)
    for n in methods.running:
        sub = sel.bm3d_subset if n == "bm3d" else None
        ds = ds.map_batches(baseline_batch, batch_size=8 if n == "bm3d" else cfg.batch_size, batch_format="numpy",
                            fn_kwargs={"method": n, "params": params[n], "subset": sub}, **task)
    if plan:
        from ray.data import ActorPoolStrategy

        # Without this Ray fuses every task stage above into the model actors, and the classical
        # methods would run serially in the few actors instead of as tasks on every free CPU (Ray
        # never fuses anything downstream of a streaming repartition).
        ds = ds.repartition(target_num_rows_per_block=cfg.batch_size * len(specs))
        ds = ds.map_batches(
            ModelScorer, batch_size=cfg.batch_size, batch_format="numpy",
            fn_constructor_kwargs={"models": [(m["key"], m["dir"], m["ensemble"]) for m in methods.models],
                                   "device": plan["device"], "torch_threads": plan["torch_threads"]},
            compute=ActorPoolStrategy(min_size=plan["min_actors"], max_size=plan["max_actors"]),
            num_cpus=plan["actor_cpus"], num_gpus=plan["actor_gpus"])
    return ds.select_columns(methods.columns)


def collect(ds, columns: list[str], n_images: int, n_specs: int) -> dict[str, np.ndarray]:
    """Runs the pipeline; its columns as numpy arrays (one row per image and noise spec)."""
    prog = Progress("evaluate", total=n_images * n_specs, unit="rows")
    tables = []
    for b in ds.iter_batches(batch_format="pyarrow", batch_size=1024):
        tables.append(b)
        prog.update(b.num_rows)
    prog.report()
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


def make_pictures(cfg: EvaluateConfig, sel: Selection, specs: list[str], methods: Methods, params: dict,
                  cols: dict[str, np.ndarray]) -> dict:
    """comparison.png and comparison_<spec>.png: the same fixed images, one row per method. Made on
    the driver; returns the report's ``pictures`` and ``picture_same_input`` (per spec: the picture
    starts from the pipeline's exact noisy pixels)."""
    from . import viz

    pics: dict[str, str] = {}
    picture_check: dict[str, bool] = {}
    pic_ids = sel.picture_ids
    if not pic_ids:
        return {"pictures": pics, "picture_same_input": picture_check}
    from .inference import Denoiser

    prow = {r["id"]: r for r in head_rows(sel.files, sel.holdout_n + len(pic_ids), ("id", "image"))[0]}
    pclean = _decode_rows([prow[i] for i in pic_ids])
    loaded = {m["dir"]: Denoiser(m["dir"], device="cpu") for m in methods.models}
    noise_col = cols["noise"].astype(str)
    all_rows: list[tuple[str, list]] = [("clean", pclean)]
    for spec in specs:
        pnoisy = list(add_noise_batch(pclean, pic_ids, spec, cfg.seed))
        psigma = noise_sigmas(pic_ids, spec, cfg.seed)
        pic_set = set(pic_ids)
        sel_idx = [i for i in np.nonzero(noise_col == spec)[0] if str(cols["id"][i]) in pic_set]
        got = {str(cols["id"][i]): int(cols[f"{NOISY}__hash"][i]) for i in sel_idx}
        picture_check[spec] = all(got.get(i) == array_hash(x) for i, x in zip(pic_ids, pnoisy))
        rows = [(f"{spec} noisy", pnoisy)]
        for n in methods.running:
            rows.append((n, [baselines.apply(n, x, baselines.noise_sigma(spec, x), params[n][spec]) for x in pnoisy]))
        rows += [(m["name"], denoise(loaded[m["dir"]], pnoisy, psigma, m["ensemble"])) for m in methods.models]
        pics[spec] = viz.save_grid([("clean", pclean), *rows], storage.join(cfg.out, f"comparison_{slug(spec)}.png"),
                                   label_width=150)
        all_rows += rows
    pics["all"] = viz.save_grid(all_rows, storage.join(cfg.out, "comparison.png"), label_width=150)
    return {"pictures": pics, "picture_same_input": picture_check}


def write_report(cfg: EvaluateConfig, command: str, *, sel: Selection, specs: list[str], methods: Methods,
                 tuning: dict, plan: dict | None, scores: Scores, pictures: dict, wall: float) -> dict:
    """per_image.parquet, config.resolved.json, report.json and report.md under ``cfg.out``; returns
    the report."""
    from . import raylib

    pq_buf = pa.BufferOutputStream()
    pq.write_table(pa.table({k: pa.array(v) for k, v in scores.per_image.items()}), pq_buf, compression="zstd")
    storage.write_bytes(storage.join(cfg.out, "per_image.parquet"), pq_buf.getvalue().to_pybytes())
    save_resolved_config(cfg, cfg.out, name="config.resolved.json")
    report = {
        "command": command,
        "versions": package_versions(),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "data": {"root": cfg.data, "split": cfg.split, "files": len(sel.read_files), "rows_in_split": sel.total_rows,
                 "images_scored": sel.n_score, "channels": sel.channels, "selection":
                 f"first {sel.n_score} images in file order"
                 + (f" after the {sel.holdout_n} tuning images" if sel.holdout_n else "")},
        "noise": specs,
        "seed": cfg.seed,
        "methods": [methods.display(k) for k in methods.keys],
        "skipped": [{"method": n, "reason": r} for n, r in methods.skipped.items()],
        "bm3d": bm3d_note(sel),
        "tuning": tuning,
        "models": [{"name": m["name"], "dir": m["dir"], "model": m["config"].get("model"),
                    "channels": m["config"].get("channels"), "trained_noise": m["config"].get("noise"),
                    "weights": m["weights"], "ensemble": m["ensemble"]}
                   for m in methods.models],
        "model_actors": ({"actors": plan["max_actors"], "gpu": plan["device"] == "cuda",
                          "cpus_per_actor": plan["actor_cpus"]} if plan else {}),
        "same_input": scores.same_input,
        "picture_same_input": pictures["picture_same_input"],
        "results": scores.results,
        "pictures": pictures["pictures"],
        "wall_seconds": wall,
        "cluster": {"cpus": raylib.cluster_cpus(), "gpus": raylib.cluster_gpus()},
    }
    storage.write_json(storage.join(cfg.out, "report.json"), report)
    storage.write_bytes(storage.join(cfg.out, "report.md"), render_markdown(report).encode())
    log.info("evaluate: wrote %s (%.1f s)", storage.join(cfg.out, "report.md"), wall)
    return report


def run(cfg: EvaluateConfig, command: str = "") -> dict:
    """Score everything; write report.md, report.json, comparison*.png, per_image.parquet under
    ``cfg.out``. Returns the report dict. ``command``: how the run was started, for the report
    (default: the command that reruns ``cfg``)."""
    from . import raylib

    specs, names = check_config(cfg)
    t_start = time.perf_counter()
    methods = Methods.resolve(names, cfg.models, cfg.ensemble)
    sel = select_images(cfg, methods.running)
    check_model_channels(cfg, methods.models, sel.channels)

    raylib.init_ray()
    log.info("evaluate: %d images x %d noise specs, baselines %s%s, models %s", sel.n_score, len(specs),
             methods.running, f" (skipped: {sorted(methods.skipped)})" if methods.skipped else "",
             [m["name"] for m in methods.models])
    params, tuning = tune_baselines(cfg, sel, specs, methods.running)
    plan = plan_model_actors(cfg, raylib.cluster_cpus(), raylib.cluster_gpus()) if methods.models else None
    ds = build_dataset(cfg, sel, specs, methods, params, plan)
    cols = collect(ds, methods.columns, sel.n_score, len(specs))
    wall = time.perf_counter() - t_start

    scores = aggregate(cols, specs, methods, params, sel.bm3d_subset)
    pictures = make_pictures(cfg, sel, specs, methods, params, cols)
    return write_report(cfg, command or report_command(cfg), sel=sel, specs=specs, methods=methods, tuning=tuning,
                        plan=plan, scores=scores, pictures=pictures, wall=wall)


def _fmt(m, s, digits):
    if m is None:
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _fmt_params(p: dict | None) -> str:
    if not p:
        return ""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())


def bm3d_note(sel) -> dict | None:
    """The report's note on BM3D's subset, only when it is one: BM3D on every scored image gets no
    note and no subset table (the table used to come out empty then)."""
    if sel.bm3d_subset is None:
        return None
    return {"images": sel.bm3d_n, "subset": "first %d scored images (file order)" % sel.bm3d_n}


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
