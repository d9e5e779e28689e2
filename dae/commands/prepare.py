r"""Turn a real dataset or an image folder into train/test Parquet shards.

    dae prepare --source fashion-mnist --out data/fashion-mnist
    dae prepare --source idx --input ~/mnist --name mnist --out data/mnist
    dae prepare --source svhn --input ~/svhn --out data/svhn
    dae prepare --source cifar10 --input ~/cifar-10-batches-bin --out data/cifar10
    dae prepare --source folder --input ~/photos --labels-from-subdirs --out data/photos
    dae prepare --source torchvision --tv-name MNIST --input data/tv --download --out data/mnist
    dae prepare --source mnist5k --out data/mnist5k --preview 32
    dae prepare --source photos --color gray --patch-size 64 --out data/photos64
    dae prepare --config prepare-photos-gray --out data/photos-gray

On a cluster: ``ray job submit --working-dir . -- python -m jobs.prepare --source folder
--input s3://bucket/images --out s3://bucket/shards`` (the folder source decodes with Ray Data).

Every setting of :class:`dae.prepare.PrepareConfig` is a flag: its common fields and every source's
options (``--split-dir`` of the folder source, ``--sets`` of natural, ...; :mod:`dae.sources`); an option
of another source than ``--source`` is refused. Writes ``OUT/train/part-00000.parquet``,
``OUT/test/...``, ``classes.json``, ``errors.jsonl``, ``preview.png`` (``--preview N``),
``config.resolved.json`` and ``summary.json`` (see :mod:`dae.prepare`).
"""

from __future__ import annotations

import argparse

from dae.jobutil import cli, config_parser, stage_config
from dae.prepare import PrepareConfig, format_summary, run


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return config_parser(__doc__, PrepareConfig, add_help, presets="prepare")


def main(args: argparse.Namespace) -> dict:
    """Returns the summary (also OUT/summary.json): images and files per split, errors, seconds."""
    summary = run(stage_config(args, PrepareConfig))
    print(format_summary(summary), flush=True)
    return summary


if __name__ == "__main__":
    cli(get_args_parser(), main)
