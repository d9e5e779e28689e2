"""The denoise stage: one streaming Ray Data pipeline; workers write the outputs, the driver keeps books.

    python -m jobs.denoise --input data/fashion-mnist --split test --model runs/m/best_model --output out/d

Pipeline, over every pending input file at once::

    read_parquet (input file on every row)                                       read tasks
      -> prepare_batch     decode PNG, channel check/convert, synthetic noise     CPU tasks
      -> Denoiser          model loaded once per actor, fixed-size forward passes  actor pool (GPU or CPU)
      -> finish_and_write  PNG encode, metrics, then the rows are WRITTEN here as  CPU tasks
                           parts, one per (batch, input file); returns one small
                           metadata row per part
      -> driver            adds up rows per input; an input whose rows are all accounted for is
                           committed: its marker, listing its parts, is written

The driver never receives an image: only metadata rows (stem, part names, counts, metric sums,
writer node), about 200 bytes per part (``summary.json`` reports what it received). See
:mod:`dae.denoise.outputs` for the layout and why every id lands exactly once.

Why this mechanism, and not Ray Data's ``write_parquet`` with ``DataContext.checkpoint_config``
(``ray.data.checkpoint.CheckpointConfig``, two-phase commit in Ray 2.58)? Read in Ray 2.58's source
(``ray/data/checkpoint/``, ``datasource/file_datasink.py``):
- Restore memory: Ray loads every checkpointed id into ONE block, sorts it into a numpy object array
  and ships it to each filter actor (1 GiB reserved each, up to 10). Measured (a throwaway script: the same
  pipeline with ``write_parquet``, 20,000 Fashion-MNIST ids of 15 characters): "SizeBytes = 1440000",
  72 bytes per id, 72 MB per million ids in every filter actor. Per-input markers cost one small
  JSON per input file, whatever the number of ids.
- Input re-read on resume: Ray reads every input row again, image bytes included, and filters the
  done ids out after the read, in a ``CheckpointFilter`` actor pool. Measured on 2 CPUs: that pool
  next to the model actor took the CPU the read tasks needed, and the resumed run hung ("Cluster
  resources are not enough to run any task from ReadFilesParquetV2"). Here a committed input file
  is skipped unread, and a resume adds no actors.
- ``mode="overwrite"`` deletes the whole output directory once at write start (the fix of ray#55043
  replaced a per-task delete, which lost the other tasks' files); with a checkpoint that still says the
  deleted rows are done, a resumed overwrite loses them. And the default
  ``delete_checkpoint_on_success=True`` with ``mode="append"`` writes everything a second time when a
  finished job is run again. Here a rerun of a finished output does nothing.
- Ray's checkpoint is keyed by id alone, so ``--allow-duplicate-ids`` could not keep both rows of a
  repeated id across a resume; and our failed rows go to their own ``errors/`` dataset.
- Ray's commit writes its pending checkpoint and renames it after the data; a rename on S3 is a
  copy plus a delete. Here nothing is ever renamed on S3.
The cost of per-input commits: a killed run redoes the inputs that were in flight (a few files).
Speed is the same as a plain ``write_parquet`` at the end of the pipeline: the write runs in the
same fused task as the PNG encode, in parallel on every node.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import time
from concurrent.futures import Future, ThreadPoolExecutor

from .. import checkpoint, inference, storage
from ..config import config_dict
from ..jobutil import Progress, save_resolved_config
from ..noise import NoiseSpec
from . import outputs
from .config import DenoiseConfig, validate
from .scan import InputFile, check_channels, input_root, list_inputs, scan

log = logging.getLogger("dae")


def fingerprint(cfg: DenoiseConfig, model_dir: str) -> str:
    """What the output values depend on (not batch sizes or actor counts: outputs do not depend on them)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(storage.read_bytes(storage.join(checkpoint.model_dir(model_dir), checkpoint.WEIGHTS)))
    cfg_model = checkpoint.load_config(model_dir)
    keys = {k: cfg_model.get(k) for k in ("model", "model_kwargs", "channels")}
    h.update(json.dumps({"model": keys, "noise": str(NoiseSpec.parse(cfg.add_noise)) if cfg.add_noise else "",
                         "seed": cfg.seed if cfg.add_noise else None, "tile": cfg.tile, "sigma": cfg.sigma,
                         "overlap": cfg.tile_overlap, "convert": cfg.convert_channels,
                         "max_pixels": cfg.max_pixels, "layout": outputs.LAYOUT,
                         # only when used: outputs written before --ensemble existed keep their fingerprint
                         **({"ensemble": cfg.ensemble} if cfg.ensemble > 1 else {})}, sort_keys=True).encode())
    return h.hexdigest()


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------- the pipeline


# Automatic batches hold about this many bytes of float32 images (input, clean and denoised copies of
# 3 channels): 1024 rows of 28x28, 11 photos of 481x321. Measured on 2 cores, 28x28 images: 1024-row
# batches ran 1,470-1,540 images/s against 1,170-1,540 with 256 (fewer tasks, less per-task overhead).
BATCH_BYTES = 64 * 1024 * 1024
MAX_BATCH = 1024


def batch_size(cfg: DenoiseConfig, files: list[InputFile]) -> int:
    """``--batch-size``, else rows of about BATCH_BYTES for the largest image, and never fewer than
    one forward pass of it (a partial pass is padded: a batch below it would waste the padding)."""
    if cfg.batch_size:
        return cfg.batch_size
    largest = max(1, max((f.max_pixels for f in files), default=1))
    by_bytes = BATCH_BYTES // (36 * largest)
    one_pass = inference.chunk_size(largest, 1, cfg.forward_batch, cfg.forward_pixels)
    return max(1, min(MAX_BATCH, max(by_bytes, one_pass)))


def plan_actors(cfg: DenoiseConfig, cpus: float, gpus: float) -> dict:
    plan = inference.plan_actors(cpus, gpus, cfg.device, cfg.min_actors, cfg.max_actors,
                                 cfg.cpus_per_actor, cfg.gpus_per_actor)
    # Two torch threads per CPU of a CPU actor: the pool is sized for half the CPUs, and a forward-bound
    # load (photos, or no noise and metrics to compute) then uses the cores the tasks leave idle.
    # Measured on 2 cores, 432 photos of 481x321, three runs each: 5.7, 6.4, 5.8 photos/s with 1 thread,
    # 8.3, 7.7, 7.3 with 2 (8.5 with two half-CPU actors); 28x28 images: 1,340-1,670 images/s with 1
    # thread, 1,580-1,630 with 2 (the small model gains little from a second thread).
    auto = 2 * plan["actor_cpus"] if plan["device"] == "cpu" else plan["actor_cpus"]
    plan["torch_threads"] = cfg.torch_threads or max(1, int(auto))
    for note in plan.pop("notes"):
        log.warning("actor pool: %s", note)
    return plan


def build_dataset(cfg: DenoiseConfig, files: list[InputFile], model_channels: int, plan: dict, fp: str):
    import ray.data

    from .. import data

    task_cpus, rows = plan["task_cpus"], plan["batch_size"]
    ds = data.read_shards(cfg.input, files=[f.path for f in files], include_paths=True, num_cpus=task_cpus)
    noise = str(NoiseSpec.parse(cfg.add_noise)) if cfg.add_noise else None
    ds = ds.map_batches(inference.prepare_batch, batch_size=rows, num_cpus=task_cpus,
                        fn_kwargs=dict(model_channels=model_channels, noise=noise, seed=cfg.seed,
                                       sigma=cfg.sigma / 255.0 if cfg.sigma >= 0 else None,
                                       convert=cfg.convert_channels, max_pixels=cfg.max_pixels))
    ds = ds.map_batches(
        inference.Denoiser, batch_size=rows,
        compute=ray.data.ActorPoolStrategy(min_size=plan["min_actors"], max_size=plan["max_actors"]),
        num_cpus=plan["actor_cpus"], num_gpus=plan["actor_gpus"],
        fn_constructor_kwargs=dict(model_dir=cfg.model, device=plan["device"], tile=cfg.tile,
                                   overlap=cfg.tile_overlap, forward_batch=cfg.forward_batch,
                                   forward_pixels=cfg.forward_pixels, deterministic=cfg.deterministic,
                                   bf16=cfg.bf16, torch_threads=plan["torch_threads"], ensemble=cfg.ensemble,
                                   keep_input=bool(noise)))
    _, root_inner = storage.resolve(input_root(cfg.input, cfg.split))
    return ds.map_batches(outputs.finish_and_write, batch_size=rows, num_cpus=task_cpus,
                          fn_kwargs=dict(out=storage.absolute(cfg.output), root_inner=root_inner,
                                         with_noise=bool(noise), fingerprint=fp))


def run_pipeline(cfg: DenoiseConfig, files: list[InputFile], model_channels: int, fp: str, plan: dict,
                 books: outputs.Books | None = None) -> dict[str, dict]:
    """Streams every pending file through the pipeline and commits each input when its last part is
    reported. Returns {stem: marker}."""
    out = storage.absolute(cfg.output)
    by_stem = {f.stem: f for f in files}
    markers = {f.stem: outputs.commit(out, f.stem, f.rel, outputs.Pending(0), fp) for f in files if f.rows == 0}
    todo = [f for f in files if f.rows > 0]
    if not todo:
        return markers
    books = books or outputs.Books({f.stem: f.rows for f in todo})
    progress = Progress("denoise", total=sum(f.rows for f in todo), every=cfg.progress_every)
    ds = build_dataset(cfg, todo, model_channels, plan, fp)
    pending: list[tuple[str, Future]] = []
    # Commits (a small JSON, and on S3 a LIST for orphans) overlap with the stream.
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="dae-commit") as pool:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            t = time.thread_time()  # the books' own CPU, apart from Ray Data's executor in this process
            for stem, p in books.add(table):
                pending.append((stem, pool.submit(outputs.commit, out, stem, by_stem[stem].rel, p, fp)))
            progress.update(sum(table.column("rows_ok").to_pylist()) + sum(table.column("rows_failed").to_pylist()))
            while pending and pending[0][1].done():  # surface commit errors early
                stem, fut = pending.pop(0)
                markers[stem] = fut.result()
            books.cpu_s += time.thread_time() - t
        for stem, fut in pending:
            markers[stem] = fut.result()
    progress.report()
    if books.open:
        lost = {by_stem[s].rel: p.rows_in - p.rows for s, p in books.open.items()}
        raise RuntimeError(f"rows missing from the pipeline output (file: missing rows): {lost}")
    return markers


def export_pngs(cfg: DenoiseConfig, markers: dict[str, dict]) -> int:
    """Each committed denoised image -> EXPORT/<safe id>-<hash>.png, written by Ray Data workers from
    the committed parts. Inputs already exported to the same folder (OUT/_exported/<stem>.json) are
    skipped; names are deterministic, so an export interrupted by a crash is simply done again."""
    import ray.data

    out, export = storage.absolute(cfg.output), storage.absolute(cfg.export_png)
    todo = []
    for stem, m in sorted(markers.items()):
        mark = storage.join(out, "_exported", f"{stem}.json")
        if m["data"] and not (storage.exists(mark) and storage.read_json(mark).get("export") == export):
            todo.append(stem)
    parts = [storage.join(out, p) for s in todo for p in markers[s]["data"]]
    n = 0
    if parts:
        fs, _ = storage.resolve(parts[0])
        ds = ray.data.read_parquet([storage.resolve(p)[1] for p in parts], filesystem=fs) \
            .select_columns(["id", "denoised"]) \
            .map_batches(outputs.export_batch, fn_kwargs=dict(export_dir=export))
        n = sum(int(b["exported"].sum()) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
    for stem in todo:
        storage.write_json(storage.join(out, "_exported", f"{stem}.json"),
                           {"export": export, "rows": markers[stem]["rows_out"]})
    return n


# ---------------------------------------------------------------- samples, summary


def write_samples(cfg: DenoiseConfig) -> str | None:
    from ..viz import save_grid

    imgs = outputs.load_samples(cfg.output, cfg.samples)
    if not imgs:
        return None
    grid = [("noisy", imgs["noisy"]), ("denoised", imgs["denoised"]), ("clean", imgs["image"])] \
        if "noisy" in imgs else [("input", imgs["image"]), ("denoised", imgs["denoised"])]
    return save_grid(grid, storage.join(cfg.output, "samples.png"))


def summarize(cfg: DenoiseConfig, files: list[InputFile], markers: dict[str, dict], processed: list[str],
              wall: float, pipeline_s: float, plan: dict, channel_counts: dict) -> dict:
    rows_in = sum(m["rows_in"] for m in markers.values())
    failed = sum(m["rows_failed"] for m in markers.values())
    done_now = sum(markers[s]["rows_in"] for s in processed)
    means = {}
    if cfg.add_noise:
        for k in inference.METRIC_COLUMNS:
            n = sum(m["metric_counts"].get(k, 0) for m in markers.values())
            total = sum(m["metric_sums_e9"].get(k, 0) for m in markers.values())
            means[k] = total / outputs.METRIC_SCALE / n if n else None
    writers: dict[str, int] = {}
    for s in processed:
        for node, n in markers[s].get("writers", {}).items():
            writers[node] = writers.get(node, 0) + n
    return {
        "input": storage.redact(cfg.input), "model": storage.redact(cfg.model),
        "output": storage.redact(cfg.output), "layout": outputs.LAYOUT,
        "files": len(files), "files_processed": len(processed), "files_skipped": len(files) - len(processed),
        "rows_in": rows_in, "rows_out": sum(m["rows_out"] for m in markers.values()), "rows_failed": failed,
        "error_fraction": failed / rows_in if rows_in else 0.0,
        "rows_processed_this_run": done_now, "metrics": means, "rows_by_writer_node": writers,
        "wall_s": round(wall, 3), "pipeline_s": round(pipeline_s, 3),
        "images_per_s": round(done_now / pipeline_s, 2) if pipeline_s > 0 and done_now else None,
        "actors": plan, "input_channels": {str(k): v for k, v in channel_counts.items()},
        "config": storage.redact(config_dict(cfg)),
    }


# ---------------------------------------------------------------- run


def _read_markers(out: str, files: list[InputFile], fp: str) -> dict[str, dict]:
    """Markers of the inputs that are complete for this run (one LIST, then only existing markers)."""
    have = {f.rsplit("/", 1)[-1][:-len(".json")] for f in storage.list_files(storage.join(out, "_done"), ".json")}
    todo = [f for f in files if f.stem in have]
    with ThreadPoolExecutor(max_workers=16) as pool:
        found = pool.map(lambda f: (f.stem, outputs.read_marker(out, f.stem, f.rows, fp)), todo)
        return {stem: m for stem, m in found if m is not None}


def run(cfg: DenoiseConfig) -> dict:
    from .. import raylib

    t0, cpu0 = time.perf_counter(), _cpu_s()
    validate(cfg)
    storage.check_access(cfg.input, must_exist=True)  # fail before any work, naming the cause
    storage.check_access(checkpoint.model_dir(cfg.model), must_exist=True)
    storage.check_access(cfg.output, write=True)
    if cfg.export_png:
        storage.check_access(cfg.export_png, write=True)
    model_cfg = checkpoint.load_config(cfg.model)
    model_channels = int(model_cfg["channels"])
    files = list_inputs(cfg.input, cfg.split)
    fp = fingerprint(cfg, cfg.model)
    raylib.init_ray()
    dups = scan(files, raylib.cluster_cpus())
    if dups.ids:
        if not cfg.allow_duplicate_ids:
            raise ValueError(dups.message())
        log.warning("--allow-duplicate-ids: %d id(s) occur more than once (%d rows); each row is denoised "
                    "and written once", dups.ids, dups.rows)
    out = storage.absolute(cfg.output)
    if cfg.overwrite:
        for sub in ("data", "errors", "_done", "_exported"):
            storage.delete(storage.join(out, sub))
    markers = _read_markers(out, files, fp)
    pending = [f for f in files if f.stem not in markers]
    if markers:
        log.info("resuming: %d of %d input files already complete, %d to do", len(markers), len(files), len(pending))
    channel_counts = check_channels(pending, model_channels, cfg.convert_channels)
    storage.makedirs(cfg.output)
    save_resolved_config(cfg, cfg.output, model_config=model_cfg, fingerprint=fp)
    plan: dict = {}
    books = outputs.Books({f.stem: f.rows for f in pending if f.rows})
    cpu1 = _cpu_s()
    t1 = time.perf_counter()
    if pending:
        cleared = outputs.clear_uncommitted(out, {f.stem for f in pending})
        if cleared:
            log.info("removed the uncommitted outputs of %d input folder(s) a stopped run left", cleared)
        plan = plan_actors(cfg, raylib.cluster_cpus(), raylib.cluster_gpus())
        plan["batch_size"] = batch_size(cfg, pending)
        log.info("denoise: %d files, %d rows, model %s (%d ch), actors %s", len(pending),
                 sum(f.rows for f in pending), model_cfg["model"], model_channels, plan)
        t1, cpu1 = time.perf_counter(), _cpu_s()
        markers.update(run_pipeline(cfg, pending, model_channels, fp, plan, books))
    pipeline_s, pipeline_cpu = time.perf_counter() - t1, _cpu_s() - cpu1
    exported = export_pngs(cfg, markers) if cfg.export_png else 0
    write_samples(cfg)
    summary = summarize(cfg, files, markers, [f.stem for f in pending], time.perf_counter() - t0, pipeline_s,
                        plan, channel_counts)
    summary["duplicate_ids"] = {"ids": dups.ids, "rows": dups.rows}
    summary["exported_png"] = exported
    summary["driver"] = {"cpu_s": round(_cpu_s(), 3), "cpu_s_run": round(_cpu_s() - cpu0, 3),
                         "cpu_s_pipeline": round(pipeline_cpu, 3), "cpu_s_books": round(books.cpu_s, 3),
                         "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                         "received": books.received}
    storage.write_json(storage.join(cfg.output, "summary.json"), summary)
    log.info("denoise: %d rows in, %d out, %d failed (see %s), %.1f images/s, metrics %s",
             summary["rows_in"], summary["rows_out"], summary["rows_failed"],
             storage.join(cfg.output, "errors"), summary["images_per_s"] or 0.0, summary["metrics"])
    if summary["error_fraction"] > cfg.max_error_fraction:
        raise RuntimeError(f"{summary['rows_failed']} of {summary['rows_in']} rows failed "
                           f"({summary['error_fraction']:.1%}), above --max-error-fraction "
                           f"{cfg.max_error_fraction:g}; reasons in {storage.join(cfg.output, 'errors')}")
    return summary
