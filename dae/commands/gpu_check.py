r"""The GPU path, proven on a real GPU: training and batch inference on one GPU, with their checks.

    make gpu-check                                         # dae gpu-check --out gpu_check_out
    dae gpu-check --device cpu --small --out /tmp/gpu-check   # CPU dry run (--dry-run), ~2 min on 2 cores

On the device machine (../shared/gpu/README.md: Python 3.12 with its own torch and pyarrow, no Ray, no
registry; build the wheels first with ``../shared/gpu/device-wheels.sh .whl`` and
``echo /.whl/ >> .git/info/exclude``), one call of the ``run`` tool with ``carry: [".whl"]`` and
``timeout_s: 360`` (estimated 3-4 minutes, not yet run on a GPU; 15 minutes of device time, machine
starts included, then leave room for a rerun; gpu_check.json is rewritten after every step, so a run
cut short by the timeout still brings back what it measured):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD RAY_USAGE_STATS_ENABLED=0 || exit 1; \
        timeout 330 python3 -m jobs.gpu_check --out $OUT/gpu

(``make gpu-check`` needs the project's .venv, which that machine cannot build: it has no registry.)

What it does, step by step: :mod:`dae.experiments.gpu_check`; every field of its ``GpuCheckConfig`` is a flag.
"""

from __future__ import annotations

import argparse
import sys

from dae.experiments.gpu_check import GpuCheckConfig, run
from dae.jobutil import cli, config_parser, stage_config


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return config_parser(__doc__, GpuCheckConfig, add_help, s3=False, presets="gpu-check")


def main(args: argparse.Namespace) -> int:
    return run(stage_config(args, GpuCheckConfig))


if __name__ == "__main__":
    sys.exit(cli(get_args_parser(), main))
