r"""Train a denoising autoencoder, data-parallel on Ray Train.

    dae train --data /tmp/dae-fashion-shards --model conv28k --noise gaussian:0.5 \
        --epochs 10 --batch-size 128 --workers 2 --storage runs --run-name fashion-conv28k
    dae train --config train-fashion --workers 2          # a preset from dae/presets/
    dae train --data data/noisy --noise none --objective nb2nb --objective-kwargs '{gamma: 1.0}'
    ray job submit --working-dir . -- python -m jobs.train --config train-fashion --storage s3://bucket/runs

Every field of :class:`dae.train.TrainConfig` is a flag (``--model-kwargs '{width: 32}'``); values
come from defaults <- ``--config`` preset <- flags. ``--objective`` names an objective of the registry in
dae/objectives/ (supervised, n2n, nb2nb, n2v); ``--objective-kwargs`` sets its options. ``--batch-size``
is the GLOBAL batch. Rerunning with the same ``--run-name`` and ``--storage`` resumes that run from its
latest checkpoint (give a larger ``--epochs`` to train further); the run's settings must stay (see
``dae.train.RESUME_SAME``: another --noise, data, loss, seed, ... is an error naming them), epochs,
workers and resources may change.
``--config`` also takes a run's config.resolved.json, which reruns that run.

Tracking: every run writes TensorBoard event files in OUT/tensorboard (each epoch's figures and
samples, rank 0's batch loss every ``--log-every-steps`` steps; ``tensorboard --logdir STORAGE``), and
curves.png and samples.png are redrawn every epoch. ``--tracker mlflow`` (``pip install 'dae[mlflow]'``)
also logs the settings, each epoch's metrics, the figures and the best model to the MLflow server at
MLFLOW_TRACKING_URI, in the experiment ``--mlflow-experiment`` (default dae); a rerun continues its MLflow run.

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 dae train --config train-fashion --tracker mlflow

Outputs, in ``--out`` (default: the run directory STORAGE/RUN_NAME, next to Ray Train's
checkpoints): best_model/ (load with dae.checkpoint.load_model), metrics.jsonl, curves.png,
samples.png, tensorboard/, config.resolved.json, summary.json (and, with --tracker mlflow, mlflow.json in
the run directory). More: docs/training.md.
"""

from __future__ import annotations

import argparse

from dae.jobutil import cli, config_parser, stage_config
from dae.train import TrainConfig, format_summary, run


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return config_parser(__doc__, TrainConfig, add_help, presets="train")


def main(args: argparse.Namespace) -> dict:
    """Returns the run summary: out, best_model, best_epoch, best, last, history, ..."""
    summary = run(stage_config(args, TrainConfig))
    print(format_summary(summary), flush=True)
    return summary


if __name__ == "__main__":
    cli(get_args_parser(), main)
