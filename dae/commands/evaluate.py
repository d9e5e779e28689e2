r"""Score every method on the same noisy images, side by side: classical baselines and trained models.

    dae evaluate --data /data/fashion-mnist --split test \
        --noise gaussian:0.1 gaussian:0.5 salt_pepper:0.2 \
        --models runs/unet-g05/best_model runs/conv28k-g05/best_model \
        --baselines median nlm tv bilateral wavelet bm3d --bm3d-limit 100 --limit 1000 \
        --out runs/eval-fmnist
    dae evaluate --data data/photos --split test --noise awgn:25 --models pretrained:color-blind --out runs/eval
    dae evaluate --config evaluate-classical --data /data/fashion-mnist --out runs/eval

On a Ray cluster: ``ray job submit --working-dir . -- python -m jobs.evaluate --data s3://... --out s3://...``.

Writes to --out (a directory or URI): report.md and report.json (per noise spec and method: mean ±
std of per-image PSNR and SSIM, images scored, seconds per image, the parameters used; the noisy
input as its own row; the command, package versions, tuning set, and a check that every method got
the identical noisy pixels), comparison.png (+ comparison_<spec>.png: one row per method on the
same fixed images), per_image.parquet (one row per image, noise and method) and
config.resolved.json. See dae/evaluate/ for the pipeline and dae/baselines.py for the methods.
``--models`` takes model directories or ``pretrained:NAME``; they run as ``dae denoise`` runs them, with the
same forward flags and defaults (--tile, --tile-overlap, --forward-batch, --forward-pixels, --deterministic,
--precision, --ensemble). More: docs/reference.md.
"""

from __future__ import annotations

import argparse
import sys

from dae.evaluate import EvaluateConfig, report_command, run
from dae.jobutil import cli, config_parser, stage_config


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    # --noise, --models, --baselines: several words
    return config_parser(__doc__, EvaluateConfig, add_help, presets="evaluate")


def main(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Runs the job; returns the report dict. ``argv``: what was typed, kept in the report's command."""
    cfg = stage_config(args, EvaluateConfig)
    return run(cfg, report_command(cfg, argv))


if __name__ == "__main__":
    cli(get_args_parser(), main, argv=sys.argv[1:])
