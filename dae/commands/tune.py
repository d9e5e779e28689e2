r"""Find a training recipe with Ray Tune: ASHA early stopping on validation PSNR over the train stage.

    dae tune --config tune-natural --data bench_out/quality-natural/data/CBSD68 --time-budget-s 3600
    dae tune --data data/fashion --base '{model: unet, noise: "gaussian:0.3"}' \
        --space '{lr: {loguniform: [0.0003, 0.003]}, model_kwargs.width: {choice: [16, 32]}}' --max-epochs 6

Every field of :class:`dae.tune.TuneConfig` is a flag; ``--config`` takes a tune preset from dae/presets/
(``tune-*``: base settings and a search space). Each trial is a train run of ``--max-epochs`` epochs
that ASHA may stop at its rungs. Rerunning with the same ``--name`` and ``--storage`` resumes the
experiment as it was started (finished trials kept, unfinished and errored ones continue from their
train runs' checkpoints); to search more, start a new ``--name``.

Outputs in STORAGE/NAME: tune_results.md / .json (every trial, best first), tune.png (val PSNR per
epoch and trial), best.yaml (a train preset: ``dae train --config STORAGE/NAME/best.yaml
--data DATA``), config.resolved.json; each trial's train run under STORAGE/NAME/trials/.
"""

from __future__ import annotations

import argparse

from dae.jobutil import cli, config_parser, stage_config
from dae.tune import TuneConfig, format_summary, run


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return config_parser(__doc__, TuneConfig, add_help, presets="tune")


def main(args: argparse.Namespace) -> dict:
    summary = run(stage_config(args, TuneConfig))
    print(format_summary(summary), flush=True)
    return summary


if __name__ == "__main__":
    cli(get_args_parser(), main)
