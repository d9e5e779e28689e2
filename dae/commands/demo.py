r"""The main stages end to end on embedded data, on a local Ray: prepare, train, denoise.

    dae demo                       # -> demo_out/   (what `make demo` runs)
    dae demo --out /tmp/demo --epochs 5 --model unet

Every field of :class:`dae.demo.DemoConfig` is a flag (``--noise gaussian:0.5 salt_pepper:0.2``,
``--model-kwargs '{width: 16}'``, ``--skip-train``). Writes ``OUT/data`` (mnist5k shards),
``OUT/noisy_grid.png``, ``OUT/run/`` (the trained model, curves, samples) and ``OUT/denoised/``,
and prints the test PSNR of the noisy and the denoised digits; see :mod:`dae.demo`.
"""

from __future__ import annotations

import argparse

from dae.demo import DemoConfig, format_result, run
from dae.jobutil import cli, config_parser, stage_config


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return config_parser(__doc__, DemoConfig, add_help, s3=False, presets="demo")


def main(args: argparse.Namespace) -> dict:
    """Returns {data, noisy_grid, train, denoise, seconds, config}."""
    result = run(stage_config(args, DemoConfig))
    print(format_result(result), flush=True)
    return result


if __name__ == "__main__":
    cli(get_args_parser(), main)
