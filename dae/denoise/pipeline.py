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

Image files (:mod:`.files`) start from the listing's Arrow blocks (path, id, group) instead of
read_parquet: the first stage's workers read and decode the files; groups of files are committed
as shard files are.

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

import logging
import resource
import time
from concurrent.futures import Future, ThreadPoolExecutor

from .. import checkpoint, inference, shards, storage
from ..config import config_dict
from ..inference_spec import InferenceSpec
from ..jobutil import Progress, save_resolved_config
from . import auto, commits, export, files as image_files, manifest, outputs, reader, rerun
from .config import DenoiseConfig, validate
from .lease import Lease
from .scan import Duplicates, InputFile, Listing, check_channels, input_root, scan

log = logging.getLogger("dae")


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------- the pipeline


# Automatic batches hold about this many bytes of float32 images (input, clean and denoised copies of
# 3 channels): 1024 rows of 28x28, 11 photos of 481x321. Measured on 2 cores, 28x28 images: 1024-row
# batches ran 1,470-1,540 images/s against 1,170-1,540 with 256 (fewer tasks, less per-task overhead).
BATCH_BYTES = 64 * 1024 * 1024
MAX_BATCH = 1024


def batch_size(cfg: DenoiseConfig, files: list[InputFile], spec: InferenceSpec) -> int:
    """``--batch-size``, else rows of about BATCH_BYTES for the largest image, and never fewer than
    one forward pass of it (a partial pass is padded: a batch below it would waste the padding)."""
    if cfg.batch_size:
        return cfg.batch_size
    largest = max(1, max((f.max_pixels for f in files), default=1))
    by_bytes = BATCH_BYTES // (36 * largest)
    one_pass = inference.chunk_size(largest, 1, spec.forward_batch, spec.forward_pixels)
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


def build_dataset(cfg: DenoiseConfig, files: list[InputFile], model_channels: int, plan: dict, spec: InferenceSpec,
                  fp: str, listing: Listing | None = None):
    """The pipeline of the module docstring; ``spec``: how the actors run the model (placed by ``plan``).
    Image files (``listing.kind`` "files") start from their listing's Arrow blocks instead of read_parquet,
    read and decoded by the first stage's workers; ``model_channels`` 0: pretrained:auto."""
    import ray.data

    from .. import data

    task_cpus, rows = plan["task_cpus"], plan["batch_size"]
    noise = cfg.noise_spec  # the parsed object goes to the tasks (None: no --add-noise)
    prep = dict(model_channels=model_channels, noise=noise, seed=cfg.seed, convert=cfg.convert_channels,
                sigma=cfg.sigma / 255.0 if cfg.sigma >= 0 else None, max_pixels=cfg.max_pixels)
    if listing is not None and listing.kind == "files":
        ds = ray.data.from_arrow(image_files.file_blocks(listing.images, files, rows))
        ds = ds.map_batches(image_files.read_and_prepare, batch_size=rows, num_cpus=task_cpus, fn_kwargs=prep)
    else:
        ds = data.read_shards(cfg.input, files=[f.path for f in files], include_paths=True, num_cpus=task_cpus)
        ds = ds.map_batches(inference.prepare_batch if model_channels else auto.prepare_rows, batch_size=rows,
                            num_cpus=task_cpus, fn_kwargs=prep)
    actor, kwargs = (auto.AutoDenoiser, dict(model_dirs=auto.models(cfg.model))) if auto.is_auto(cfg.model) \
        else (inference.Denoiser, dict(model_dir=cfg.model))
    ds = ds.map_batches(
        actor, batch_size=rows,
        compute=ray.data.ActorPoolStrategy(min_size=plan["min_actors"], max_size=plan["max_actors"]),
        num_cpus=plan["actor_cpus"], num_gpus=plan["actor_gpus"],
        fn_constructor_kwargs=dict(spec=spec, keep_input=noise is not None, **kwargs))
    _, root_inner = storage.resolve(input_root(cfg.input, cfg.split))
    return ds.map_batches(outputs.finish_and_write, batch_size=rows, num_cpus=task_cpus,
                          fn_kwargs=dict(out=storage.absolute(cfg.output), root_inner=root_inner,
                                         with_noise=noise is not None, fingerprint=fp))


def run_pipeline(cfg: DenoiseConfig, files: list[InputFile], model_channels: int, fp: str, plan: dict,
                 spec: InferenceSpec, books: outputs.Books, generation: str, lease: Lease,
                 listing: Listing | None = None) -> dict[str, dict]:
    """Streams every pending file through the pipeline and commits each input when its last part is
    reported. Returns {stem: marker}."""
    out = storage.absolute(cfg.output)
    by_stem = {f.stem: f for f in files}

    def commit(f: InputFile, p: outputs.Pending) -> dict:
        extra = f.marker_extra() if isinstance(f, image_files.FileGroup) else None
        return commits.commit(out, f.stem, f.rel, p, fp, generation, f.identity, lease.check, extra)

    markers = {f.stem: commit(f, outputs.Pending(0)) for f in files if f.rows == 0}
    todo = [f for f in files if f.rows > 0]
    if not todo:
        return markers
    progress = Progress("denoise", total=sum(f.rows for f in todo), every=cfg.progress_every)
    ds = build_dataset(cfg, todo, model_channels, plan, spec, fp, listing)
    pending: list[tuple[str, Future]] = []
    # Commits (a small JSON, and on S3 a LIST for orphans) overlap with the stream.
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="dae-commit") as pool:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            t = time.thread_time()  # the books' own CPU, apart from Ray Data's executor in this process
            for stem, p in books.add(table):
                pending.append((stem, pool.submit(commit, by_stem[stem], p)))
            progress.update(sum(table.column("rows_ok").to_pylist()) + sum(table.column("rows_failed").to_pylist()))
            while pending and pending[0][1].done():  # surface commit errors early
                stem, fut = pending.pop(0)
                markers[stem] = fut.result()
            books.cpu_s += time.thread_time() - t
        for stem, fut in pending:
            markers[stem] = fut.result()
    progress.finish()
    if books.open:
        lost = {by_stem[s].rel: p.rows_in - p.rows for s, p in books.open.items()}
        raise RuntimeError(f"rows missing from the pipeline output (file: missing rows): {lost}")
    return markers


def export_pngs(cfg: DenoiseConfig, markers: dict[str, dict]) -> int:
    """Each committed denoised image -> EXPORT/<safe id>-<hash>.png, written by Ray Data workers from
    the committed parts. An input whose committed parts were already exported to the same folder
    (OUT/_exported/<stem>.json lists the parts and the names) is skipped; a recomputed input is
    exported again, then its marker replaced, then the images its old rows had and its new rows do
    not are deleted. Names are deterministic, so an export interrupted by a crash is done again."""
    import ray.data

    out, export = storage.absolute(cfg.output), storage.absolute(cfg.export_png)
    todo = []
    for stem, m in sorted(markers.items()):
        mark = commits.export_marker_path(out, stem)
        old = storage.read_json(mark) if storage.exists(mark) else None
        if not old or old.get("export") != export or old.get("parts") != m["data"]:
            todo.append((stem, old))
    names: dict[str, list[str]] = {stem: [] for stem, _ in todo}
    part_stem = {storage.resolve(storage.join(out, p))[1]: stem for stem, _ in todo for p in markers[stem]["data"]}
    if part_stem:
        fs, _ = storage.resolve(out)
        ds = ray.data.read_parquet(sorted(part_stem), filesystem=fs, include_paths=True) \
            .select_columns(["id", "denoised", "path"]) \
            .map_batches(outputs.export_batch, fn_kwargs=dict(export_dir=export))
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for name, path in zip(b["name"], b["path"]):
                names[part_stem[str(path)]].append(str(name))
    for stem, old in todo:
        new = sorted(names[stem])
        storage.write_json(commits.export_marker_path(out, stem),
                           {"export": export, "parts": markers[stem]["data"], "names": new})
        if old and old.get("export") == export:
            stale = set(old.get("names", [])) - set(new)
            for name in sorted(stale):
                storage.delete(storage.join(export, name))
    return sum(len(v) for v in names.values())


# ---------------------------------------------------------------- samples, summary


def write_samples(cfg: DenoiseConfig) -> str | None:
    from ..viz import save_grid

    imgs = reader.load_samples(cfg.output, cfg.samples)
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


def _check_apart(cfg: DenoiseConfig) -> None:
    """An output (or export) inside the input would be read back as input on the next run."""
    for name in ("output", "export_png", "export"):
        where = getattr(cfg, name)
        how = storage.relation(where, image_files.input_dir(cfg.input)) if where else None
        if how:
            raise ValueError(f"--{name.replace('_', '-')} {storage.redact(where)} {how} the --input "
                             f"{storage.redact(cfg.input)}: the next run would read the outputs as inputs; "
                             f"put the {name.replace('_', ' ')} outside the input")


def _say_listing(listing: Listing) -> None:
    for reason, rels in listing.skipped.items():
        log.info("input: %d file(s) skipped, %s (first: %s)", len(rels), reason, ", ".join(rels[:3]))


def _check_kind(cfg: DenoiseConfig, listing: Listing) -> None:
    if listing.kind == "files" and cfg.keep_removed:
        raise ValueError("--keep-removed applies to shard inputs: image files are committed in groups, and a "
                         "removed file's group is redone without it")
    if listing.kind != "files" and cfg.export:
        raise ValueError("--export writes each image at its input file's path, so it needs image files as --input; "
                         "for shards use --export-png")


def _probe(cfg: DenoiseConfig, listing: Listing, model_channels: int) -> None:
    """A few files' headers, on a Ray worker: the largest image sizes the batches, and images that all
    mismatch the model fail the run before any work (as the shard scan does)."""
    import ray

    found = ray.get(ray.remote(num_cpus=1)(image_files.probe_files).remote(image_files.sample(listing.images)))
    listing.probe = found
    for g in listing.files:
        g.max_pixels = found["max_pixels"] or 1 << 20
    seen = found["channels"]
    bad = {c: n for c, n in seen.items() if c != model_channels}
    if model_channels and seen and len(bad) == len(seen) and not cfg.convert_channels:
        c = max(bad, key=bad.get)
        raise ValueError(f"the model expects {model_channels}-channel images but {sum(bad.values())} of "
                         f"{sum(seen.values())} sampled input images do not; "
                         + inference.channel_fix(c, model_channels))


def _check_duplicates(cfg: DenoiseConfig, dups) -> None:
    if dups.ids:
        if not cfg.allow_duplicate_ids:
            raise ValueError(dups.message())
        log.warning("--allow-duplicate-ids: %d id(s) occur more than once (%d rows); each row is denoised "
                    "and written once", dups.ids, dups.rows)


def run(cfg: DenoiseConfig) -> dict:
    from .. import raylib

    t0 = time.perf_counter()
    validate(cfg)
    # fail before any work, naming the cause
    storage.check_access(image_files.input_dir(cfg.input), must_exist=True)
    for m in (auto.models(cfg.model).values() if auto.is_auto(cfg.model) else [cfg.model]):
        storage.check_access(checkpoint.model_dir(m), must_exist=True)
    storage.check_access(cfg.output, write=True)
    for where in (cfg.export_png, cfg.export):
        if where:
            storage.check_access(where, write=True)
    _check_apart(cfg)
    shards.require_prepared(input_root(image_files.input_dir(cfg.input), cfg.split))  # a prepare killed half way
    model_cfg = auto.model_config(cfg.model)
    listing = image_files.list_any(cfg.input, cfg.split)
    _check_kind(cfg, listing)
    _say_listing(listing)
    raylib.init_ray()
    if listing.kind == "files":  # ids are paths: unique; channels and sizes from a few files' headers
        dups = Duplicates()
        _probe(cfg, listing, int(model_cfg["channels"]))
    else:
        dups = scan(listing.files, raylib.cluster_cpus())
    _check_duplicates(cfg, dups)
    plan = plan_actors(cfg, raylib.cluster_cpus(), raylib.cluster_gpus())
    # One spec, placed once: the manifest records what the actors are given.
    spec = cfg.inference_spec().placed(plan["device"], plan["torch_threads"])
    settings = manifest.settings(cfg, model_cfg, spec, listing.kind)
    with Lease(storage.absolute(cfg.output)) as lease:
        return _run_held(cfg, listing, model_cfg, settings, plan, spec, dups, lease, t0)


def _run_held(cfg: DenoiseConfig, listing: Listing, model_cfg: dict, settings: dict, plan: dict,
              spec: InferenceSpec, dups, lease: Lease, t0: float) -> dict:
    out, files = storage.absolute(cfg.output), listing.files
    cpu0 = _cpu_s()
    fp = manifest.fingerprint(settings)
    p = rerun.plan(out, files, settings, overwrite=cfg.overwrite, keep_removed=cfg.keep_removed)
    if p.kept:  # ids of kept outputs count too: the output will hold them beside the inputs' rows
        from .. import raylib

        dups = scan(files, raylib.cluster_cpus(), kept=[(p.markers[st]["input"], [
            storage.join(out, x) for x in p.markers[st]["data"] + p.markers[st]["errors"]]) for st in p.kept])
        _check_duplicates(cfg, dups)
    pending = p.pending
    log.info("inputs: %d unchanged (skipped), %d changed (redone), %d new, %d retired, %d kept", len(p.unchanged),
             len(p.changed), len(p.new), len(p.retired), len(p.kept))
    model_channels = int(model_cfg["channels"])  # 0: pretrained:auto, any of its models' channels
    channel_counts = check_channels(pending, model_channels, cfg.convert_channels or not model_channels)
    if listing.kind == "files":
        channel_counts = {f"{c} (sampled)": n for c, n in listing.probe.get("channels", {}).items()}
    save_resolved_config(cfg, cfg.output, model_config=model_cfg, fingerprint=fp, settings=settings)
    books = outputs.Books({f.stem: f.rows for f in pending if f.rows})
    markers = dict(p.markers)
    cpu1, t1 = _cpu_s(), time.perf_counter()
    if pending:
        plan["batch_size"] = batch_size(cfg, pending, spec)
        # pretrained:auto has no one channel count: each image goes to the model that fits it
        channels = f"{model_channels} ch" if model_channels else "gray or color per image"
        log.info("denoise: %d files, %d rows, model %s (%s), actors %s", len(pending),
                 sum(f.rows for f in pending), model_cfg["model"], channels, plan)
        markers.update(run_pipeline(cfg, pending, model_channels, fp, plan, spec, books, p.generation, lease,
                                    listing))
    pipeline_s, pipeline_cpu = time.perf_counter() - t1, _cpu_s() - cpu1
    exported = export_pngs(cfg, markers) if cfg.export_png else 0
    exports = export.export_files(out, storage.absolute(cfg.export), cfg.export_format, cfg.export_quality,
                                  cfg.overwrite, markers) if cfg.export else None
    write_samples(cfg)
    summary = summarize(cfg, files, markers, [f.stem for f in pending], time.perf_counter() - t0, pipeline_s,
                        plan if pending else {}, channel_counts)
    summary["inputs"] = p.counts()
    summary["listing"] = listing.describe()
    summary["duplicate_ids"] = {"ids": dups.ids, "rows": dups.rows}
    summary["exported_png"] = exported
    summary["export"] = exports
    summary["driver"] = {"cpu_s": round(_cpu_s(), 3), "cpu_s_run": round(_cpu_s() - cpu0, 3),
                         "cpu_s_pipeline": round(pipeline_cpu, 3), "cpu_s_books": round(books.cpu_s, 3),
                         "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                         "received": books.received}
    storage.write_json(storage.join(cfg.output, "summary.json"), summary)
    # A rerun with nothing new says so, instead of "0.0 images/s"; no metrics (no --add-noise): none shown.
    speed = (f"{summary['images_per_s'] or 0.0:.1f} images/s" if pending
             else "nothing to denoise: no new or changed input")
    log.info("denoise: %d rows in, %d out, %d failed (see %s), %s%s",
             summary["rows_in"], summary["rows_out"], summary["rows_failed"], storage.join(cfg.output, "errors"),
             speed, f", metrics {summary['metrics']}" if summary["metrics"] else "")
    if summary["error_fraction"] > cfg.max_error_fraction:
        raise RuntimeError(f"{summary['rows_failed']} of {summary['rows_in']} rows failed "
                           f"({summary['error_fraction']:.1%}), above --max-error-fraction "
                           f"{cfg.max_error_fraction:g}; reasons in {storage.join(cfg.output, 'errors')}")
    if exports and exports["refused"]:
        raise RuntimeError(f"--export: {exports['refused']} image(s) not written; first: {exports['first_refused'][0]}")
    return summary
