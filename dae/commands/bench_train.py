r"""Training throughput: the Ray Train job (1 and 2 workers) against a plain PyTorch loop.

    dae bench-train --data /tmp/dae-fashion-shards --images 20000 --epochs 2

Writes a subset of ``--data`` (the first ``--images`` train images by file order and
``--val-images`` test images) to ``--work``/shards, then on those same shards, model, global
batch and noise measures:

  plain   one epoch of a plain single-process loop (no Ray), split into noise vs the rest
  job1    the train job's stage (``dae.train.run``) with 1 worker, ``--epochs`` epochs; images/s of each epoch
  job2    the same with 2 workers (same global batch)

and where the job's time goes: driver-side data preparation (read + decode + materialize),
Ray Train start-up (worker group, dataset hand-off, model setup), per epoch the batch
creation with noise, forward/backward, validation, and report/checkpoint. The goal is the job's
1-worker epoch >= 0.8x the plain loop's images/s. The plain loop is :func:`dae.experiments.reference.plain_train`;
every field of :class:`dae.experiments.bench.train.BenchTrainConfig` is a flag.
"""

from __future__ import annotations

import argparse

from dae.experiments.bench.train import BenchTrainConfig, run
from dae.jobutil import cli, config_parser, stage_config


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return config_parser(__doc__, BenchTrainConfig, add_help, s3=False, presets="bench-train")


def main(args: argparse.Namespace) -> dict:
    return run(stage_config(args, BenchTrainConfig))


if __name__ == "__main__":
    cli(get_args_parser(), main)
