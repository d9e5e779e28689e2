"""The prepare stage: a real dataset or an image folder -> train/test Parquet shards.

    from dae.prepare import PrepareConfig, run
    summary = run(PrepareConfig(source="mnist5k", out="data/mnist5k", limit=500))

    python -m jobs.prepare --source fashion-mnist --out data/fashion-mnist      # the job over run()

:class:`PrepareConfig` holds the settings every source shares and, in ``options``, the chosen source's
own (``FolderOptions``, ``NaturalOptions``, ...: each source module declares them, :mod:`dae.sources`);
the flags, presets and ``config.resolved.json`` name them flat (``--split-dir``), and
``PrepareConfig.from_flat(source="folder", split_dir=...)`` builds one from such names.

The sources (:mod:`dae.sources`) turn their input into records per split; :func:`run` writes them as
``OUT/train/part-00000.parquet``, ``OUT/test/...`` (:mod:`dae.shards` schema; dataset name and source
in the file metadata), plus ``classes.json`` when the source has class names, ``errors.jsonl``
(folder source: one line per unreadable file), ``preview.png`` (``preview`` > 0),
``config.resolved.json`` and ``summary.json``. Same input and options -> byte-identical shards.

Rules this module keeps (a rerun a user can trust):

* Inputs are never outputs: ``--out`` may not be, hold, or lie inside any folder the source reads
  (:func:`dae.sources.input_dirs`: ``--input``, every ``--split-dir``, a source's default folder).
  Refused in one line before anything is read or deleted (:func:`check_out_apart`; real local paths,
  ``s3://`` bucket + key compared on whole path components).
* ``--overwrite`` deletes only what prepare writes (:func:`old_outputs`): in OUT/train and OUT/test the
  ``part-NNNNN.parquet`` files whose footer says ``dae.format`` (a file of that name that is not a dae
  shard is refused: the new shards would overwrite it), and in OUT the side files above. Every other
  file, a user's photo, README or own Parquet file, stays. An OUT that already has shards is refused
  without ``--overwrite``.
* Markers (:mod:`dae.shards`): after the checks and before any delete or shard, ``OUT/_prepare_started.json``
  is written and then the old ``OUT/_prepared.json`` deleted; ``_prepared.json`` (dataset, source,
  images per split, started_at, finished_at) is written last, after the shards, side files,
  ``config.resolved.json`` and ``summary.json``. A run killed anywhere leaves either the old finished
  root or a started one without a completion marker, which train, evaluate and denoise refuse
  (:func:`dae.shards.require_prepared`). Roots of shards written without prepare have no marker and
  are read as they are.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from . import shards, storage
from .config import build_config
from .jobutil import Progress, save_resolved_config
from .sources import SOURCES, SPLITS, Encoded, Prepared, input_dirs, open_source, source_options

log = logging.getLogger("dae")


@dataclass(frozen=True)
class PrepareConfig:
    source: str = field(default="", metadata={"help": "where the images come from", "choices": list(SOURCES)})
    out: str = field(default="", metadata={"help": "output root (local path or s3:// URI)"})
    input: str = field(default="", metadata={"help": "input directory / root (idx, svhn, cifar10, folder, "
                                                     "torchvision; fashion-mnist: override the Debian path)"})
    name: str = field(default="", metadata={"help": "dataset name for ids and metadata; empty: the source's own name"})
    rows_per_shard: int = field(default=10_000, metadata={"help": "images per Parquet file"})
    limit: Optional[int] = field(default=None, metadata={"help": "at most this many images per split"})
    test_fraction: float = field(default=0.1, metadata={
        "help": "share of test images for folder, sklearn-digits and photos (hash-based split)"})
    overwrite: bool = field(default=False, metadata={"help": "replace shards already in --out"})
    preview: int = field(default=0, metadata={"help": "write preview.png with the first N train images"})
    noisy: bool = field(default=False, metadata={
        "help": "the images are noisy and there is no clean version (scans, microscopy, low light): marks "
                "the shards so jobs.train refuses supervised training and validates without clean targets"})
    # The chosen source's own options (dae.sources: FolderOptions, NaturalOptions, TorchvisionOptions,
    # PhotosOptions; None for a source without options). Their fields are flags beside the ones above.
    options: Any = field(default=None, metadata={"options_of": "source", "options": source_options})

    def __post_init__(self):
        cls = source_options().get(self.source)
        if self.options is None and cls is not None:
            object.__setattr__(self, "options", cls())  # the source's defaults
        elif self.options is not None and type(self.options) is not cls:
            raise TypeError(f"source {self.source!r} takes {cls.__name__ if cls else 'no options'}, "
                            f"got {type(self.options).__name__}")

    @classmethod
    def from_flat(cls, **values) -> PrepareConfig:
        """A config from flat settings, the flags' names (``source="folder", split_dir=(...)``): the
        chosen source's options go into ``options``, typed and checked like a preset's values."""
        return build_config(cls, values)

def check_config(cfg: PrepareConfig) -> None:
    if not cfg.out:
        raise ValueError("--out is required (output directory or s3:// URI)")
    if cfg.rows_per_shard < 1:
        raise ValueError(f"--rows-per-shard must be >= 1, got {cfg.rows_per_shard}")
    if cfg.limit is not None and cfg.limit < 0:
        raise ValueError(f"--limit must be >= 0, got {cfg.limit}")
    if not 0.0 <= cfg.test_fraction <= 1.0:
        raise ValueError(f"--test-fraction must be in [0, 1], got {cfg.test_fraction}")


SIDE_FILES = ("errors.jsonl", "classes.json", "preview.png", "summary.json", "config.resolved.json")
_SHARD_NAME = re.compile(r"part-\d{5,}\.parquet")  # shards.shard_name
_TMP = re.compile(r"\.tmp-\d+-[0-9a-f]{8}$")  # storage.write_bytes' temporary name, left by a killed run


def check_out_apart(out: str, inputs) -> None:
    """Refuse an ``out`` that is, holds or lies inside one of ``inputs``: --overwrite or the shards
    themselves would land among the files the source is about to read."""
    for inp in inputs:
        how = storage.relation(out, inp)
        if how:
            raise ValueError(f"--out {storage.redact(out)} {how} the input folder {storage.redact(inp)}: prepare "
                             "never writes where it reads; choose an --out apart from the inputs")


def check_outputs(out: str, overwrite: bool) -> None:
    """Refuse to mix a new run's shards with an old run's (a smaller run would leave stale part
    files behind) unless --overwrite."""
    old = [s for s in SPLITS if shards.list_shards(out, s)]
    if old and not overwrite:
        raise FileExistsError(f"{out} already has shards in {', '.join(old)}; pass --overwrite to replace them")


def _name(path: str) -> str:
    return path.replace(os.sep, "/").rsplit("/", 1)[-1]


def _is_dae_shard(path: str) -> bool:
    try:
        return b"dae.format" in (shards.read_schema(path).metadata or {})
    except shards.ShardSchemaError:  # not Parquet at all
        return False


def old_outputs(out: str) -> list[str]:
    """The files --overwrite deletes: the split folders' dae shards and OUT's side files (and their
    temporaries), nothing else. Raises FileExistsError for a file named like a shard that is not one."""
    found, kept = [], []
    for split in SPLITS:
        for f in storage.list_files(shards.split_dir(out, split)):
            name = _name(f)
            if _TMP.search(name) and _SHARD_NAME.fullmatch(_TMP.sub("", name)):
                found.append(f)
            elif not _SHARD_NAME.fullmatch(name):
                kept.append(f)
            elif _is_dae_shard(f):
                found.append(f)
            else:
                raise FileExistsError(f"{f} is named like a shard but is not a dae shard (no dae.format metadata): "
                                      "move it away, prepare would write over it")
    found += [f for f in storage.list_files(out) if _TMP.sub("", _name(f)) in SIDE_FILES]
    foreign = [f for f in kept if f.endswith(".parquet")]
    if foreign:  # readers of a split read every .parquet file in it
        log.warning("prepare: --overwrite leaves %d Parquet file(s) it did not write in place, which train and "
                    "evaluate will read with the new shards (e.g. %s)", len(foreign), foreign[0])
    return found


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def mark_started(out: str, source: str) -> str:
    """The started marker, then the old completion marker gone: from here until :func:`mark_finished`
    the root reads as unfinished (:func:`dae.shards.require_prepared`). Returns the start time."""
    started_at = _now()
    storage.write_json(storage.join(out, shards.PREPARE_STARTED), {"source": source, "started_at": started_at})
    storage.delete(storage.join(out, shards.PREPARED))
    return started_at


def mark_finished(out: str, summary: dict, started_at: str) -> None:
    """The completion marker: written last, after every shard and side file."""
    storage.write_json(storage.join(out, shards.PREPARED), {
        "dataset": summary["dataset"], "source": summary["source"], "splits": summary["splits"],
        "images": summary["images"], "started_at": started_at, "finished_at": _now()})


def write_split(out: str, split: str, records, prepared: Prepared, cfg: PrepareConfig, seen: set) -> dict:
    progress = Progress(f"prepare {split}")
    with shards.ShardWriter(out, split, dataset=prepared.dataset, source=prepared.source,
                            rows_per_shard=cfg.rows_per_shard, noisy=cfg.noisy) as writer:
        # The stage also applies --limit (sources apply it too where it saves reading).
        for rid, image, label in itertools.islice(records, cfg.limit):
            if rid in seen:
                raise ValueError(f"duplicate id {rid!r} from source {cfg.source}")
            seen.add(rid)
            if isinstance(image, Encoded):
                writer.add(rid, png=image.png, height=image.height, width=image.width,
                           channels=image.channels, label=label)
            else:
                writer.add(rid, image=image, label=label)
            progress.update(1)
    return {"images": writer.count, "files": len(writer.files)}


def write_preview(out: str, n: int, per_row: int = 16) -> str | None:
    from . import viz

    images = []
    for row in shards.iter_rows(shards.list_shards(out, "train"), columns=["image"]):
        images.append(shards.to_float(shards.decode_png(row["image"])))
        if len(images) >= n:
            break
    if not images:
        return None
    rows = [("train" if i == 0 else "", images[i:i + per_row]) for i in range(0, len(images), per_row)]
    return viz.save_grid(rows, storage.join(out, "preview.png"))


def run(cfg: PrepareConfig) -> dict:
    """Write the shards and side files of ``cfg``; returns the summary (also OUT/summary.json)."""
    check_config(cfg)
    check_out_apart(cfg.out, input_dirs(cfg))
    storage.check_access(cfg.out, write=True)  # missing bucket / bad credentials / no endpoint: fail now
    if cfg.input and storage.is_uri(cfg.input):
        storage.check_access(cfg.input, must_exist=True)
    start = time.perf_counter()
    check_outputs(cfg.out, cfg.overwrite)
    stale = old_outputs(cfg.out) if cfg.overwrite else []  # (refuses a foreign file it would overwrite)
    prepared = open_source(cfg)  # validates the input before anything old is deleted
    started_at = mark_started(cfg.out, cfg.source)  # first: a kill from here on leaves a refused root
    for f in stale:
        storage.delete(f)
    log.info("prepare: %s from %s -> %s", prepared.dataset, prepared.source, cfg.out)

    splits, seen = {}, set()
    for split, records in prepared.splits.items():
        splits[split] = write_split(cfg.out, split, records, prepared, cfg, seen)

    extra_files = []
    if prepared.classes is not None:
        class_to_label = {c: i for i, c in enumerate(prepared.classes)}
        storage.write_json(storage.join(cfg.out, "classes.json"),
                           {"classes": prepared.classes, "class_to_label": class_to_label})
        extra_files.append("classes.json")
    if prepared.errors is not None:
        lines = "".join(json.dumps(e, sort_keys=True) + "\n" for e in prepared.errors)
        storage.write_bytes(storage.join(cfg.out, "errors.jsonl"), lines.encode())
        extra_files.append("errors.jsonl")
    if cfg.preview > 0 and write_preview(cfg.out, cfg.preview):
        extra_files.append("preview.png")
    seconds = time.perf_counter() - start
    total = sum(s["images"] for s in splits.values())
    summary = {"dataset": prepared.dataset, "source": prepared.source, "out": cfg.out, "splits": splits,
               "noisy_only": cfg.noisy,
               "images": total, "errors": len(prepared.errors or []), "stats": prepared.stats,
               "seconds": round(seconds, 3), "side_files": extra_files}
    if prepared.errors:
        log.warning("prepare: %d unreadable file(s) left out, listed in %s (first: %s: %s)", len(prepared.errors),
                    storage.join(cfg.out, "errors.jsonl"), prepared.errors[0]["path"], prepared.errors[0]["reason"])
    if total == 0:
        log.warning("prepare: no images written (check --input, --limit and errors.jsonl)")
    save_resolved_config(cfg, cfg.out)
    storage.write_json(storage.join(cfg.out, "summary.json"), summary)
    mark_finished(cfg.out, summary, started_at)
    return summary


def format_summary(summary: dict) -> str:
    """What the job prints: images and files per split, unreadable files, the rate."""
    out, splits, total, seconds = summary["out"], summary["splits"], summary["images"], summary["seconds"]
    lines = [f"prepared {summary['dataset']} ({summary['source']}) -> {out}"
             + (" (noisy-only: no clean reference)" if summary.get("noisy_only") else "")]
    for split, s in splits.items():
        lines.append(f"  {split:5s} {s['images']:8d} images in {s['files']} shard file(s)")
    if "errors.jsonl" in summary["side_files"]:
        lines.append(f"  errors{summary['errors']:8d} unreadable file(s), listed in "
                     f"{storage.join(out, 'errors.jsonl')}")
    if summary["stats"].get("alpha_dropped"):
        lines.append(f"  alpha channel dropped from {summary['stats']['alpha_dropped']} image(s)")
    if "preview.png" in summary["side_files"]:
        lines.append(f"  preview: {storage.join(out, 'preview.png')}")
    lines.append(f"  {total} images in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} images/s)")
    return "\n".join(lines)
