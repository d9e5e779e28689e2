"""The sweep's steps: prepare every dataset, train every cell, evaluate every dataset (each reused
when its output is there: :mod:`dae.experiments.reuse`), then the table, targets, charts and report."""

from __future__ import annotations

import dataclasses
import logging
import time

from dae import storage
from dae.config import command_line, config_dict
from dae.jobutil import save_resolved_config

from ..reuse import evaluate_or_reuse, prepare_or_reuse, train_or_reuse
from .config import Cell, SweepConfig, epochs_of, plan, prepare_config, train_config
from .table import check_targets, collect, render, save_charts

log = logging.getLogger("dae")


def prepare_dataset(cfg: SweepConfig, name: str) -> str:
    """OUT/data/NAME from the prepare stage, unless a finished one is there."""
    return prepare_or_reuse(prepare_config(cfg, name), name)


def train_cell(cfg: SweepConfig, cell: Cell) -> dict:
    """Train one cell (or reuse its finished run). Returns {model_dir, seconds, reused, last}."""
    return train_or_reuse(train_config(cfg, cell), f"{cell.data}/{cell.run_name}")


def evaluate_dataset(cfg: SweepConfig, name: str, levels: list[str], model_dirs: list[str]) -> dict:
    """One evaluate run per dataset (every model and baseline, every level); reused when its report
    was made with exactly these settings and these very weights (a retrained model keeps its dir)."""
    from dae.evaluate import EvaluateConfig

    ecfg = EvaluateConfig(data=storage.join(cfg.out, "data", name), split="test",
                          out=storage.join(cfg.out, "eval", name), noise=tuple(levels), models=tuple(model_dirs),
                          baselines=tuple(cfg.baselines), limit=cfg.eval_limit, seed=cfg.seed,
                          bm3d_limit=cfg.bm3d_limit)
    return evaluate_or_reuse(ecfg, name)


def check(cfg: SweepConfig) -> tuple[list[Cell], dict[str, list[str]]]:
    """The plan, with every prepare and train config built: a bad option fails before anything runs."""
    cells, levels = plan(cfg)
    for name in levels:
        prepare_config(cfg, name)  # unknown prepare options fail before anything runs
    for c in cells:
        train_config(cfg, c)  # bad model kwargs etc. fail before anything runs
    log.info("sweep: %d datasets, %d training runs, %d evaluate runs -> %s", len(levels), len(cells), len(levels),
             cfg.out)
    for c in cells:
        log.info("  %-14s %-28s %d epochs", c.data, c.run_name, epochs_of(cfg, c.data))
    return cells, levels


def _write(cfg: SweepConfig, result: dict, md: str) -> None:
    storage.write_json(storage.join(cfg.out, "quality.json"), result)
    storage.write_bytes(storage.join(cfg.out, "quality.md"), md.encode())
    for t in result["targets"]:
        log.info("target %s @ %s: %s%s", t["target"], t["where"], t["status"],
                 "" if t["margin"] is None else f" ({t['margin']:+.2f} dB)")
    log.info("sweep: wrote %s", storage.join(cfg.out, "quality.md"))


def run(cfg: SweepConfig) -> dict:
    """Prepare, train, evaluate and tabulate (or, with ``dry_run``, only plan); returns what
    ``OUT/quality.json`` holds: command, config, table, targets, charts, runs, wall_seconds."""
    from dae.raylib import init_ray

    cells, levels = check(cfg)
    if cfg.dry_run:
        return {"cells": [dataclasses.asdict(c) for c in cells], "levels": levels}
    command = command_line("quality-sweep", cfg)
    storage.check_access(cfg.out, write=True)
    t0 = time.perf_counter()
    init_ray(training=True)
    save_resolved_config(cfg, cfg.out)
    for name in levels:
        prepare_dataset(cfg, name)
    trained: dict[Cell, dict] = {}
    for i, c in enumerate(cells):
        log.info("sweep: run %d/%d", i + 1, len(cells))
        trained[c] = train_cell(cfg, c)
    reports = {name: evaluate_dataset(cfg, name, lv, [trained[c]["model_dir"] for c in cells if c.data == name])
               for name, lv in levels.items()}
    table = collect(cfg, cells, levels, reports, trained)
    targets = check_targets(cfg, table)
    charts = save_charts(cfg, table)
    wall = time.perf_counter() - t0
    result = {"command": command, "config": config_dict(cfg), "table": table, "targets": targets, "charts": charts,
              "runs": [{**dataclasses.asdict(c), "run": c.run_name, **trained[c]} for c in cells],
              "wall_seconds": wall}
    _write(cfg, result, render(cfg, table, targets, reports, trained, command, wall))
    return result
