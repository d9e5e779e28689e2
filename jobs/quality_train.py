"""Quality check of the training job against a plain single-process PyTorch loop.

    python -m jobs.quality_train --data /tmp/fmnist-shards --epochs 10 --runs plain,job1,job2

Trains the same model (default ``conv28k``) on the same shards with the same noise, loss,
optimizer (Adam + one-cycle), global batch and epochs three ways and prints the mean per-image
test PSNR/SSIM of each:

  plain  a plain PyTorch loop in one process (no Ray): the reference
  job1   the train job's stage (``dae.train.run``, as ``python -m jobs.train`` runs it) with 1 worker
  job2   the same with 2 workers (same global batch: 64 per worker)

The target: job1 and job2 within 0.2 dB of plain. When ``--data`` has no shards yet, Fashion-MNIST
shards are written there by the prepare stage from the Debian package's directory (``--fashion-dir``).
Results go to ``--out``/quality.json. The plain loop is :func:`dae.reference.plain_train`.
"""

from __future__ import annotations

import argparse

from dae.bench import quality_train as bench
from dae.jobutil import cli


def get_args_parser() -> argparse.ArgumentParser:
    return bench.get_args_parser(__doc__)


def main(args: argparse.Namespace) -> dict:
    return bench.run(args)


if __name__ == "__main__":
    cli(get_args_parser(), main)
