r"""The project's quality table: seed models, the best model, a blind model and the classical
denoisers on the same noisy images, over datasets and noise levels, with the quality targets checked.

    dae quality-sweep --config quality-sweep --out runs/quality        # the full grid (GPU)
    dae quality-sweep --config quality-sweep-cpu --out runs/quality    # what fits a 2-core CPU
    dae quality-sweep --config quality-sweep --dry-run                 # print the plan only

On a Ray cluster: ``ray job submit --working-dir . -- python -m jobs.quality_sweep --config
quality-sweep --out s3://bucket/quality --gpus-per-worker 1``.

Every field of :class:`dae.experiments.sweep.SweepConfig` is a flag (``--datasets``, ``--models`` and ``--grid``
take YAML). Prepares the data, trains every cell, evaluates every dataset (each step reused when its
output is there) and writes ``OUT/quality.md``, ``quality.json``, ``psnr_<dataset>.png`` and the
evaluate reports ``OUT/eval/<dataset>/``; see :mod:`dae.experiments.sweep`.
"""

from __future__ import annotations

import argparse

from dae.experiments.sweep import SweepConfig, run
from dae.jobutil import cli, config_parser, stage_config


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return config_parser(__doc__, SweepConfig, add_help, presets="quality-sweep")


def main(args: argparse.Namespace) -> dict:
    """Returns what OUT/quality.json holds (with --dry-run: the plan)."""
    return run(stage_config(args, SweepConfig))


if __name__ == "__main__":
    cli(get_args_parser(), main)
