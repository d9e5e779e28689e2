"""The main stages end to end on embedded data, on a local Ray: prepare, train, denoise.

    python -m jobs.demo                       # -> demo_out/   (what `make demo` runs)
    python -m jobs.demo --out /tmp/demo --epochs 5 --model unet

Every field of :class:`dae.demo.DemoConfig` is a flag (``--noise gaussian:0.5 salt_pepper:0.2``,
``--model-kwargs '{width: 16}'``, ``--skip-train``). Writes ``OUT/data`` (mnist5k shards),
``OUT/noisy_grid.png``, ``OUT/run/`` (the trained model, curves, samples) and ``OUT/denoised/``,
and prints the test PSNR of the noisy and the denoised digits; see :mod:`dae.demo`.
"""

from __future__ import annotations

import argparse

from dae.config import add_config_args, resolve_config
from dae.demo import DemoConfig, format_result, run
from dae.jobutil import cli, setup_logging


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Demo: MNIST shards and a clean/noisy grid", add_help=add_help)
    add_config_args(parser, DemoConfig)
    return parser


def main(args: argparse.Namespace) -> dict:
    """Returns {data, noisy_grid, train, denoise, seconds, config}."""
    setup_logging()
    result = run(resolve_config(DemoConfig, args))
    print(format_result(result), flush=True)
    return result


if __name__ == "__main__":
    cli(get_args_parser(), main)
