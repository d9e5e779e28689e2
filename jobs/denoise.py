"""Denoise image shards with a trained model: streaming batch inference on Ray Data.

    python -m jobs.denoise --input /tmp/dae-fashion-shards/test --model runs/fashion-conv28k/best_model \
        --output /tmp/denoised
    python -m jobs.denoise --config denoise-eval --input /tmp/dae-fashion-shards/test \
        --model runs/fashion-conv28k/best_model --output /tmp/denoised-eval      # + gaussian:0.5 noise, metrics
    ray job submit --working-dir . -- python -m jobs.denoise --config denoise-gpu \
        --input s3://bucket/shards/test --model s3://bucket/models/unet --output s3://bucket/denoised

Every field of :class:`DenoiseConfig` is a flag; values come from defaults <- ``--config`` preset
(``jobs/presets/denoise-*.yaml``) <- flags.

Outputs (OUTPUT is a local directory or an s3:// URI)::

    OUTPUT/data/<stem>.parquet    one file per input shard (<stem>: the shard's path under --input,
                                  '/' -> '__'): id, denoised (PNG), noisy (PNG, with --add-noise),
                                  the input's columns (image, label, split, height, width, channels)
                                  and, with --add-noise, psnr_noisy, psnr_denoised, ssim_denoised
    OUTPUT/errors/<stem>.parquet  rows that failed (id, reason, stage, input); only when there are any
    OUTPUT/_done/<stem>.json      completeness marker of that input shard, written LAST
    OUTPUT/summary.json, OUTPUT/samples.png, OUTPUT/config.resolved.json

Exactly once, resumable: an input shard is complete when its marker exists and carries this run's
fingerprint (model weights hash, noise, seed, tiling, channel conversion); a rerun skips complete shards
and recomputes the rest, overwriting any data file a crash left without a marker (written whole by
``dae.storage.write_bytes``: temp file + rename locally, one object upload on S3, so no rename is ever
needed). Outputs are deterministic, so a recomputed file equals the one it replaces, and every input id
lands exactly once in data or errors.

Why one pipeline and driver-side grouped writes instead of a loop over files: a per-file loop restarts
the Ray Data pipeline (and drains the actor pool) at every file, so the GPU idles at each boundary and
small files cost more in startup than in work. One streaming pipeline over all pending files keeps
every stage busy; each row carries its input file (``include_paths``), and the driver gathers rows per
file and writes a file as soon as its row count (known from the Parquet footer) is reached. Only
files that are in flight are buffered, so memory is bounded by the read parallelism, not the dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dae import inference, shards, storage
from dae.config import add_config_args, config_dict, resolve_config
from dae.jobutil import Progress, save_resolved_config, setup_logging
from dae.noise import NoiseSpec

log = logging.getLogger("dae")

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DenoiseConfig:
    input: str = field(default="", metadata={"help": "shard directory, single .parquet file, or URI"})
    model: str = field(default="", metadata={"help": "model directory (dae.checkpoint.save_model)"})
    output: str = field(default="", metadata={"help": "output directory or URI"})
    split: str = field(default="", metadata={"help": "only INPUT/SPLIT/*.parquet; empty: every shard under INPUT"})
    add_noise: str = field(default="", metadata={"help": "synthesize noise first (evaluation on clean data), "
                                                         "e.g. gaussian:0.5; adds noisy PNG + metrics"})
    seed: int = field(default=0, metadata={"help": "noise seed (noise depends on seed and id only)"})
    batch_size: int = field(default=256, metadata={"help": "rows per Ray Data batch, every stage"})
    min_actors: int = field(default=1, metadata={"help": "model actor pool lower bound"})
    max_actors: int = field(default=0, metadata={"help": "model actor pool upper bound; 0: as many as the "
                                                         "cluster fits while leaving CPU for reads"})
    gpus_per_actor: float = field(default=1.0, metadata={"help": "GPUs per model actor (when using GPUs)"})
    cpus_per_actor: float = field(default=1.0, metadata={"help": "CPUs per model actor"})
    torch_threads: int = field(default=0, metadata={"help": "torch threads per actor; 0: max(1, cpus-per-actor)"})
    device: str = field(default="auto", metadata={"help": "auto: cuda when the cluster has GPUs", "choices": DEVICES})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on GPU (never used on CPU)"})
    tile: int = field(default=512, metadata={"help": "images larger than TILE x TILE are denoised in tiles"})
    tile_overlap: int = field(default=32, metadata={"help": "pixels shared by neighbouring tiles (blended)"})
    forward_batch: int = field(default=64, metadata={"help": "images (or tiles) per forward pass"})
    forward_pixels: int = field(default=4 * 1024 * 1024, metadata={"help": "cap on pixels per forward pass"})
    deterministic: bool = field(default=True, metadata={"help": "pad partial forward passes to a fixed size so "
                                                                "results never depend on batching"})
    convert_channels: bool = field(default=False, metadata={"help": "convert images to the model's channels "
                                                                    "(RGB->gray: BT.601 luma; gray->RGB: copy)"})
    export_png: str = field(default="", metadata={"help": "also write each denoised image as DIR/<safe id>.png"})
    max_error_fraction: float = field(default=0.1, metadata={"help": "fail the job when more than this fraction "
                                                                     "of rows failed"})
    max_pixels: int = field(default=shards.DEFAULT_MAX_PIXELS, metadata={"help": "refuse images above this "
                                                                                 "many pixels (bombs)"})
    overwrite: bool = field(default=False, metadata={"help": "discard existing outputs instead of resuming"})
    samples: int = field(default=8, metadata={"help": "images in samples.png"})
    progress_every: float = field(default=10.0, metadata={"help": "seconds between progress lines"})


# ---------------------------------------------------------------- input files and markers


@dataclass
class InputFile:
    path: str  # as listed (local path or URI)
    inner: str  # path inside its filesystem: what Ray's include_paths column holds
    stem: str  # output name
    rel: str  # path under --input, for people
    rows: int


def _rel(path: str, root: str) -> str:
    root = str(root).rstrip("/\\")
    if path.startswith(root + "/") or path.startswith(root + os.sep):
        return path[len(root) + 1:]
    return os.path.basename(path)


def output_stem(rel: str) -> str:
    """<stem> of OUTPUT/data/<stem>.parquet: the path under --input, '/' -> '__', no .parquet."""
    rel = rel[:-len(".parquet")] if rel.endswith(".parquet") else rel
    return re.sub(r"[/\\]+", "__", rel)


def list_inputs(cfg: DenoiseConfig) -> list[InputFile]:
    files = shards.list_shards(cfg.input, cfg.split or None)
    if not files:
        where = shards.split_dir(cfg.input, cfg.split) if cfg.split else cfg.input
        raise FileNotFoundError(f"no .parquet shards under {where}")
    root = shards.split_dir(cfg.input, cfg.split) if cfg.split else cfg.input
    out, seen = [], {}
    for f in shards.validate_shards(files):
        fs, inner = storage.resolve(f)
        rows = pq.ParquetFile(inner, filesystem=fs).metadata.num_rows
        rel = _rel(f, root)
        stem = output_stem(rel)
        if stem in seen:
            raise ValueError(f"input files {seen[stem]} and {rel} map to the same output name {stem!r}")
        seen[stem] = rel
        out.append(InputFile(f, inner, stem, rel, rows))
    return out


def check_channels(files: list[InputFile], model_channels: int, convert: bool) -> dict[int, int]:
    """Reads the (tiny) channels column of every input: a dataset whose images do not match the model
    fails here, before any work, with counts and the fix; returns {channels: rows}."""
    counts: dict[int, int] = {}
    for f in files:
        col = shards.read_shard(f.path, columns=["channels"]).column("channels")
        for v, c in zip(*np.unique(col.to_numpy(zero_copy_only=False), return_counts=True)):
            counts[int(v)] = counts.get(int(v), 0) + int(c)
    bad = {c: n for c, n in counts.items() if c != model_channels}
    if bad and not convert:
        total = sum(counts.values())
        desc = ", ".join(f"{n} with {c} channel(s)" for c, n in sorted(bad.items()))
        raise ValueError(f"the model expects {model_channels}-channel images but {sum(bad.values())} of {total} "
                         f"input images do not ({desc}); "
                         + inference.channel_mismatch_message(max(bad, key=bad.get), model_channels)
                         .split("; ", 1)[1])
    return counts


def fingerprint(cfg: DenoiseConfig, model_dir: str) -> str:
    """What the output values depend on (not batch sizes or actor counts: outputs do not depend on them)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(storage.read_bytes(storage.join(model_dir, "model.safetensors")))
    cfg_model = storage.read_json(storage.join(model_dir, "config.json"))
    keys = {k: cfg_model.get(k) for k in ("model", "model_kwargs", "channels")}
    h.update(json.dumps({"model": keys, "noise": str(NoiseSpec.parse(cfg.add_noise)) if cfg.add_noise else "",
                         "seed": cfg.seed if cfg.add_noise else None, "tile": cfg.tile,
                         "overlap": cfg.tile_overlap, "convert": cfg.convert_channels,
                         "max_pixels": cfg.max_pixels}, sort_keys=True).encode())
    return h.hexdigest()


def marker_path(out: str, stem: str) -> str:
    return storage.join(out, "_done", f"{stem}.json")


def data_path(out: str, stem: str) -> str:
    return storage.join(out, "data", f"{stem}.parquet")


def errors_path(out: str, stem: str) -> str:
    return storage.join(out, "errors", f"{stem}.parquet")


def read_marker(out: str, f: InputFile, fp: str) -> dict | None:
    """The marker of a complete output for ``f``, else None. Raises when the output was made with a
    different model/noise/seed (mixing them would make a dataset that is no single run's result)."""
    p = marker_path(out, f.stem)
    if not storage.exists(p):
        return None
    m = storage.read_json(p)
    if m.get("fingerprint") != fp:
        raise ValueError(f"{out} holds outputs of a different run (model, noise, seed, tiling or channel "
                         f"conversion differ: {p}); use a new --output or pass --overwrite")
    if m.get("rows_in") != f.rows:
        log.warning("%s: input now has %d rows, marker says %s: recomputing", f.rel, f.rows, m.get("rows_in"))
        return None
    return m


# ---------------------------------------------------------------- writing one input's results


def _restore_types(t: pa.Table, with_noise: bool) -> pa.Table:
    """Output schema: Ray hands numpy columns back (label with nulls came as float NaN)."""
    cols = {"id": pa.string(), "denoised": pa.binary()}
    if with_noise:
        cols["noisy"] = pa.binary()
    cols.update({"image": pa.binary(), "height": pa.int32(), "width": pa.int32(), "channels": pa.int8(),
                 "label": pa.int64(), "split": pa.string()})
    if with_noise:
        cols.update({k: pa.float64() for k in inference.METRIC_COLUMNS})
    arrays = []
    for name, tp in cols.items():
        col = t.column(name)
        if name == "label" and pa.types.is_floating(col.type):
            col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
        arrays.append(col.cast(tp))
    return pa.Table.from_arrays(arrays, schema=pa.schema(list(cols.items())))


def _parquet_bytes(t: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(t, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def write_outputs(cfg: DenoiseConfig, f: InputFile, parts: list[pa.Table], fp: str) -> dict:
    """Data file, errors file (when any), exported PNGs, then the marker (last: it declares the rest done)."""
    with_noise = bool(cfg.add_noise)
    # permissive: a batch whose labels are all set comes back int64, one with nulls float64 (NaN)
    t = pa.concat_tables(parts, promote_options="permissive") if parts else None
    if t is None or t.num_rows == 0:
        ok = err = None
    else:
        failed = pc.not_equal(t.column(inference.ERROR), "")
        ok, err = t.filter(pc.invert(failed)), t.filter(failed)
    # Input order: positions of the good ids in the input file (ties keep arrival order).
    if ok is not None and ok.num_rows:
        in_ids = shards.read_shard(f.path, columns=["id"]).column("id")
        pos = pc.index_in(ok.column("id"), value_set=in_ids)
        ok = ok.take(pc.sort_indices(pa.table({"p": pos}), sort_keys=[("p", "ascending")]))
        data = _restore_types(ok, with_noise)
    else:
        data = _restore_types(_empty_like(t, with_noise), with_noise)
    storage.write_bytes(data_path(cfg.output, f.stem), _parquet_bytes(data))
    n_err = 0 if err is None else err.num_rows
    ep = errors_path(cfg.output, f.stem)
    if n_err:
        errs = pa.table({"id": err.column("id").cast(pa.string()),
                         "reason": err.column(inference.ERROR).cast(pa.string()),
                         "stage": err.column(inference.ERROR_STAGE).cast(pa.string()),
                         "input": pa.array([f.rel] * n_err, pa.string())})
        storage.write_bytes(ep, _parquet_bytes(errs))
    elif storage.exists(ep):
        storage.delete(ep)  # a stale file from an older attempt must not count twice
    if cfg.export_png and data.num_rows:
        for i, png in zip(data.column("id").to_pylist(), data.column("denoised").to_pylist()):
            storage.write_bytes(storage.join(cfg.export_png, inference.export_name(i)), png)
    sums, counts = {}, {}
    if with_noise:
        for k in inference.METRIC_COLUMNS:
            v = data.column(k).to_numpy(zero_copy_only=False).astype(np.float64)
            fin = np.isfinite(v)
            sums[k], counts[k] = float(v[fin].sum()), int(fin.sum())
    marker = {"input": f.rel, "stem": f.stem, "rows_in": f.rows, "rows_out": data.num_rows, "rows_failed": n_err,
              "data": f"data/{f.stem}.parquet", "errors": f"errors/{f.stem}.parquet" if n_err else None,
              "metric_sums": sums, "metric_counts": counts, "fingerprint": fp,
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if data.num_rows + n_err != f.rows:
        raise RuntimeError(f"{f.rel}: {f.rows} input rows but {data.num_rows} written + {n_err} failed")
    storage.write_json(marker_path(cfg.output, f.stem), marker)
    return marker


def _empty_like(t: pa.Table | None, with_noise: bool) -> pa.Table:
    names = ["id", "denoised", "image", "height", "width", "channels", "label", "split"]
    if with_noise:
        names += ["noisy", *inference.METRIC_COLUMNS]
    if t is not None:
        return t.slice(0, 0)
    return pa.table({n: pa.array([], pa.float64() if n in inference.METRIC_COLUMNS or n == "label"
                                  else pa.int64() if n in ("height", "width", "channels")
                                  else pa.binary() if n in ("denoised", "image", "noisy") else pa.string())
                     for n in names})


# ---------------------------------------------------------------- the pipeline


def build_dataset(cfg: DenoiseConfig, files: list[InputFile], model_channels: int, plan: dict):
    import ray.data

    from dae import data

    ds = data.read_shards(cfg.input, files=[f.path for f in files], include_paths=True)
    noise = str(NoiseSpec.parse(cfg.add_noise)) if cfg.add_noise else None
    ds = ds.map_batches(inference.prepare_batch, batch_size=cfg.batch_size,
                        fn_kwargs=dict(model_channels=model_channels, noise=noise, seed=cfg.seed,
                                       convert=cfg.convert_channels, max_pixels=cfg.max_pixels))
    ds = ds.map_batches(
        inference.Denoiser, batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=plan["min_actors"], max_size=plan["max_actors"]),
        num_cpus=plan["actor_cpus"], num_gpus=plan["actor_gpus"],
        fn_constructor_kwargs=dict(model_dir=cfg.model, device=plan["device"], tile=cfg.tile,
                                   overlap=cfg.tile_overlap, forward_batch=cfg.forward_batch,
                                   forward_pixels=cfg.forward_pixels, deterministic=cfg.deterministic,
                                   bf16=cfg.bf16, torch_threads=plan["torch_threads"],
                                   keep_input=bool(noise)))
    ds = ds.map_batches(inference.finish_batch, batch_size=cfg.batch_size, fn_kwargs=dict(with_noise=bool(noise)))
    return ds


def plan_actors(cfg: DenoiseConfig, cpus: float, gpus: float) -> dict:
    plan = inference.plan_actors(cpus, gpus, cfg.device, cfg.min_actors, cfg.max_actors,
                                 cfg.cpus_per_actor, cfg.gpus_per_actor)
    plan["torch_threads"] = cfg.torch_threads or max(1, int(plan["actor_cpus"]))
    for note in plan.pop("notes"):
        log.warning("actor pool: %s", note)
    return plan


def run_pipeline(cfg: DenoiseConfig, files: list[InputFile], model_channels: int, fp: str, plan: dict) -> dict:
    """Streams every pending file through the pipeline; writes each file's outputs when its last row
    arrives. Returns {stem: marker}."""
    by_inner = {f.inner: f for f in files}
    markers: dict[str, dict] = {}
    buffers: dict[str, list[pa.Table]] = {}
    received: dict[str, int] = {}
    for f in files:
        if f.rows == 0:
            markers[f.stem] = write_outputs(cfg, f, [], fp)
    todo = [f for f in files if f.rows > 0]
    if not todo:
        return markers
    progress = Progress("denoise", total=sum(f.rows for f in todo), every=cfg.progress_every)
    ds = build_dataset(cfg, todo, model_channels, plan)
    pending: list[tuple[InputFile, Future]] = []
    # One writer thread: Parquet encoding and uploads overlap with the stream (pyarrow releases the GIL).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dae-writer") as pool:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if table.num_rows == 0:
                continue
            paths = table.column(inference.PATH)
            for inner in pc.unique(paths).to_pylist():
                f = by_inner.get(inner)
                if f is None:
                    raise RuntimeError(f"row from unexpected input {inner!r}")
                part = table.filter(pc.equal(paths, inner)) if len(by_inner) > 1 else table
                buffers.setdefault(inner, []).append(part.drop_columns([inference.PATH]))
                received[inner] = received.get(inner, 0) + part.num_rows
                if received[inner] > f.rows:
                    raise RuntimeError(f"{f.rel}: got {received[inner]} rows, the file has {f.rows}")
                if received[inner] == f.rows:
                    pending.append((f, pool.submit(write_outputs, cfg, f, buffers.pop(inner), fp)))
            progress.update(table.num_rows)
            while pending and pending[0][1].done():  # surface writer errors early
                f, fut = pending.pop(0)
                markers[f.stem] = fut.result()
        for f, fut in pending:
            markers[f.stem] = fut.result()
    progress.report()
    lost = {by_inner[k].rel: by_inner[k].rows - received.get(k, 0) for k in by_inner
            if by_inner[k].rows and received.get(k, 0) != by_inner[k].rows}
    if lost:
        raise RuntimeError(f"rows missing from the pipeline output (file: missing rows): {lost}")
    return markers


# ---------------------------------------------------------------- summary, samples


def write_samples(cfg: DenoiseConfig, markers: dict[str, dict]) -> str | None:
    """samples.png from the first rows of the first non-empty output file (sorted: same on reruns)."""
    stems = sorted(s for s, m in markers.items() if m["rows_out"])
    if not stems or cfg.samples <= 0:
        return None
    fs, inner = storage.resolve(data_path(cfg.output, stems[0]))
    batch = next(pq.ParquetFile(inner, filesystem=fs).iter_batches(batch_size=cfg.samples))
    rows = batch.to_pydict()

    def dec(col):
        return [shards.to_float(shards.decode_png(b)) for b in rows[col]]

    grid = [("noisy", dec("noisy")), ("denoised", dec("denoised")), ("clean", dec("image"))] \
        if cfg.add_noise else [("input", dec("image")), ("denoised", dec("denoised"))]
    from dae.viz import save_grid

    return save_grid(grid, storage.join(cfg.output, "samples.png"))


def summarize(cfg: DenoiseConfig, files: list[InputFile], markers: dict[str, dict], processed: list[str],
              wall: float, pipeline_s: float, plan: dict, channel_counts: dict) -> dict:
    rows_in = sum(m["rows_in"] for m in markers.values())
    rows_out = sum(m["rows_out"] for m in markers.values())
    failed = sum(m["rows_failed"] for m in markers.values())
    done_now = sum(markers[s]["rows_in"] for s in processed)
    means = {}
    if cfg.add_noise:
        for k in inference.METRIC_COLUMNS:
            n = sum(m["metric_counts"].get(k, 0) for m in markers.values())
            means[k] = sum(m["metric_sums"].get(k, 0.0) for m in markers.values()) / n if n else None
    redact = getattr(storage, "redact", lambda x: x)
    return {
        "input": redact(cfg.input), "model": redact(cfg.model), "output": redact(cfg.output),
        "files": len(files), "files_processed": len(processed), "files_skipped": len(files) - len(processed),
        "rows_in": rows_in, "rows_out": rows_out, "rows_failed": failed,
        "error_fraction": failed / rows_in if rows_in else 0.0,
        "rows_processed_this_run": done_now, "metrics": means,
        "wall_s": round(wall, 3), "pipeline_s": round(pipeline_s, 3),
        "images_per_s": round(done_now / pipeline_s, 2) if pipeline_s > 0 else None,
        "actors": plan, "input_channels": {str(k): v for k, v in channel_counts.items()},
        "config": redact(config_dict(cfg)),
    }


# ---------------------------------------------------------------- main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, DenoiseConfig)
    storage.add_s3_args(parser)
    return parser


def validate(cfg: DenoiseConfig) -> None:
    for name in ("input", "model", "output"):
        if not getattr(cfg, name):
            raise ValueError(f"--{name} is required")
    if cfg.add_noise:
        NoiseSpec.parse(cfg.add_noise)  # lists the valid kinds on error
    for name in ("batch_size", "forward_batch", "tile", "min_actors", "forward_pixels"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if not 0 <= cfg.tile_overlap < cfg.tile:
        raise ValueError(f"--tile-overlap must be in [0, tile={cfg.tile}), got {cfg.tile_overlap}")
    if not 0.0 <= cfg.max_error_fraction <= 1.0:
        raise ValueError(f"--max-error-fraction must be in [0, 1], got {cfg.max_error_fraction}")
    if cfg.cpus_per_actor <= 0:
        raise ValueError(f"--cpus-per-actor must be > 0, got {cfg.cpus_per_actor}")


def run(cfg: DenoiseConfig) -> dict:
    from dae import checkpoint, raylib

    t0 = time.perf_counter()
    validate(cfg)
    storage.check_access(cfg.input, must_exist=True)  # fail before any work, naming the cause
    storage.check_access(cfg.model, must_exist=True)
    storage.check_access(cfg.output, write=True)
    if cfg.export_png:
        storage.check_access(cfg.export_png, write=True)
    model_cfg = checkpoint.load_config(cfg.model)
    model_channels = int(model_cfg["channels"])
    files = list_inputs(cfg)
    if cfg.overwrite:
        for sub in ("data", "errors", "_done"):
            storage.delete(storage.join(cfg.output, sub))
    fp = fingerprint(cfg, cfg.model)
    markers: dict[str, dict] = {}
    pending = []
    for f in files:
        m = read_marker(cfg.output, f, fp)
        if m is None:
            pending.append(f)
        else:
            markers[f.stem] = m
    if markers:
        log.info("resuming: %d of %d input files already complete, %d to do", len(markers), len(files), len(pending))
    channel_counts = check_channels(pending, model_channels, cfg.convert_channels) if pending else {}
    storage.makedirs(cfg.output)
    save_resolved_config(cfg, cfg.output, model_config=model_cfg, fingerprint=fp)
    plan: dict = {}
    t1 = time.perf_counter()
    if pending:
        raylib.init_ray()
        plan = plan_actors(cfg, raylib.cluster_cpus(), raylib.cluster_gpus())
        log.info("denoise: %d files, %d rows, model %s (%d ch), actors %s", len(pending),
                 sum(f.rows for f in pending), model_cfg["model"], model_channels, plan)
        t1 = time.perf_counter()
        markers.update(run_pipeline(cfg, pending, model_channels, fp, plan))
    pipeline_s = time.perf_counter() - t1
    write_samples(cfg, markers)
    summary = summarize(cfg, files, markers, [f.stem for f in pending], time.perf_counter() - t0, pipeline_s,
                        plan, channel_counts)
    storage.write_json(storage.join(cfg.output, "summary.json"), summary)
    log.info("denoise: %d rows in, %d out, %d failed (see %s), %.1f images/s, metrics %s",
             summary["rows_in"], summary["rows_out"], summary["rows_failed"],
             storage.join(cfg.output, "errors"), summary["images_per_s"] or 0.0, summary["metrics"])
    if summary["error_fraction"] > cfg.max_error_fraction:
        raise RuntimeError(f"{summary['rows_failed']} of {summary['rows_in']} rows failed "
                           f"({summary['error_fraction']:.1%}), above --max-error-fraction "
                           f"{cfg.max_error_fraction:g}; reasons in {storage.join(cfg.output, 'errors')}")
    return summary


def main(args: argparse.Namespace) -> dict:
    """Runs the job; returns the summary dict (also in OUTPUT/summary.json)."""
    setup_logging()
    storage.configure_from_args(args)
    cfg = resolve_config(DenoiseConfig, args)
    return run(cfg)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
