"""Which images an evaluation reads: the scored ones, the tuning ones, BM3D's subset, the picture's.

Rules:
- The driver reads ids and channel counts only (the head of the split, in file order), never the
  scored images; the pipeline reads those.
- The tuning images never overlap the scored ones: the first ``tune_images`` images of another split
  (``--tune-split``, else val, else train) or, when the data has no other split, the first
  ``tune_images`` of the scored split, which are then left out of scoring (the report says which).
- A collection with no clean version (prepared with --noisy) is refused: scores need clean images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow.parquet as pq

from .. import baselines, shards, storage
from .config import EvaluateConfig


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


def decode_rows(rows: list[dict]) -> list[np.ndarray]:
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
