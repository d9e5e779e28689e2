"""Score every method on the same noisy images, side by side: classical baselines and trained models.

    python -m jobs.evaluate --data /data/fashion-mnist --split test \\
        --noise gaussian:0.1 gaussian:0.5 salt_pepper:0.2 \\
        --models runs/unet-g05/model runs/conv28k-g05/model \\
        --baselines median nlm tv bilateral wavelet bm3d --bm3d-limit 100 --limit 1000 \\
        --out runs/eval-fmnist

    python -m jobs.evaluate --config evaluate-classical --data /data/fashion-mnist --out runs/eval

On a Ray cluster: ``ray job submit --working-dir . -- python -m jobs.evaluate --data s3://... --out s3://...``.

Writes to --out (a directory or URI): report.md and report.json (per noise spec and method: mean ±
std of per-image PSNR and SSIM, images scored, seconds per image, the parameters used; the noisy
input as its own row; the command, package versions, tuning set, and a check that every method got
the identical noisy pixels), comparison.png (+ comparison_<spec>.png: one row per method on the
same fixed images), per_image.parquet (one row per image, noise and method) and
config.resolved.json. See dae/evaluation.py for the pipeline and dae/baselines.py for the methods.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from dae import baselines, storage
from dae.config import add_config_args, config_dict, resolve_config
from dae.evaluation import EvaluateConfig, run
from dae.jobutil import setup_logging


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help,
                                     conflict_handler="resolve",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, EvaluateConfig)
    storage.add_s3_args(parser)
    # Lists as plain space-separated words (`--noise gaussian:0.1 gaussian:0.5`), replacing the
    # generic YAML-text flags add_config_args made for these tuple fields.
    parser.add_argument("--noise", nargs="+", default=None, metavar="SPEC",
                        help="noise specs, e.g. gaussian:0.1 gaussian:0.5 salt_pepper:0.2 "
                             f"(default: {' '.join(EvaluateConfig.noise)})")
    parser.add_argument("--models", nargs="*", default=None, metavar="DIR",
                        help="model directories (config.json + model.safetensors); named by directory")
    parser.add_argument("--baselines", nargs="*", default=None, metavar="NAME",
                        help=f"classical methods: {', '.join(baselines.BASELINES)} "
                             f"(default: {' '.join(baselines.DEFAULT_BASELINES)}; bm3d only if installed)")
    return parser


def command_line(cfg: EvaluateConfig) -> str:
    """The command that reruns this exact configuration (every field spelled out)."""
    parts = ["python", "-m", "jobs.evaluate"]
    for k, v in config_dict(cfg).items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, (tuple, list)):
            parts += [flag, *map(str, v)]
        else:
            parts += [flag, str(v)]
    return shlex.join(parts)


def main(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    setup_logging()
    storage.configure_from_args(args)
    cfg = resolve_config(EvaluateConfig, args)
    command = command_line(cfg)
    if argv is not None:
        # Run from a shell: keep what was typed, plus the fully resolved equivalent.
        command = f"{shlex.join(['python', '-m', 'jobs.evaluate', *argv])}\n# resolved: {command}"
    return run(cfg, command)


if __name__ == "__main__":
    main(get_args_parser().parse_args(), argv=sys.argv[1:])
