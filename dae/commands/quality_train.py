r"""Quality check of the training job against a plain single-process PyTorch loop.

    dae quality-train --data /tmp/fmnist-shards --epochs 10 --runs plain,job1,job2

Trains the same model (default ``conv28k``) on the same shards with the same noise, loss,
optimizer (Adam + one-cycle), global batch and epochs three ways and prints the mean per-image
test PSNR/SSIM of each:

  plain  a plain PyTorch loop in one process (no Ray): the reference
  job1   the train job's stage (``dae.train.run``, as ``dae train`` runs it) with 1 worker
  job2   the same with 2 workers (same global batch: 64 per worker)

The target: job1 and job2 within 0.2 dB of plain. When ``--data`` has no shards yet, Fashion-MNIST
shards are written there by the prepare stage from the Debian package's directory (``--fashion-dir``).
Results go to ``--out``/quality.json. The plain loop is :func:`dae.experiments.reference.plain_train`;
every field of :class:`dae.experiments.quality_train.QualityTrainConfig` is a flag.
"""

from __future__ import annotations

import argparse

from dae.experiments.quality_train import QualityTrainConfig, run
from dae.jobutil import cli, config_parser, stage_config


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return config_parser(__doc__, QualityTrainConfig, add_help, s3=False, presets="quality-train")


def main(args: argparse.Namespace) -> dict:
    return run(stage_config(args, QualityTrainConfig))


if __name__ == "__main__":
    cli(get_args_parser(), main)
