r"""The self-supervised quality table: supervised, Noise2Noise, Neighbor2Neighbor and Noise2Void, one
U-Net recipe trained on CBSD432 with AWGN sigma 25, scored on Kodak24 and CBSD68 beside our CBM3D and
the Neighbor2Neighbor paper's figures.

    dae quality-selfsup --out bench_out/quality-selfsup       # make quality-selfsup
    dae quality-selfsup --recipe '{epochs: 40}'               # continue every run to 40 epochs

Every field of :class:`dae.experiments.quality_selfsup.QualitySelfSupConfig` is a flag (``--recipe`` takes
YAML, merged over ``dae/experiments/recipes/quality-selfsup.yaml``). Writes ``OUT/quality_selfsup.md`` and
``.json``; see :mod:`dae.experiments.quality_selfsup`.
"""

from __future__ import annotations

import argparse

from dae.experiments.quality_selfsup import QualitySelfSupConfig, run
from dae.jobutil import cli, config_parser, stage_config


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return config_parser(__doc__, QualitySelfSupConfig, add_help, presets="quality-selfsup")


def main(args: argparse.Namespace) -> dict:
    """Returns what OUT/quality_selfsup.json holds."""
    result = run(stage_config(args, QualitySelfSupConfig))
    print(result["markdown"])
    return result


if __name__ == "__main__":
    cli(get_args_parser(), main)
