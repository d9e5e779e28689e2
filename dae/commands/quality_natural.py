r"""The natural-photo quality table (docs/results.md): Set12 and BSD68 (gray), CBSD68 and Kodak24 (color) at
sigma 15, 25 and 50; our models, our BM3D/CBM3D and NLM on the same noisy pixels, and the published
DnCNN, FFDNet and DRUNet figures.

    dae quality-natural --out bench_out/quality-natural       # make quality-natural
    dae quality-natural --train '{}' \
        --models gray=pretrained:gray-blind color=pretrained:color-blind

Every field of :class:`dae.experiments.quality_natural.QualityNaturalConfig` is a flag (``--train`` takes
YAML; its default is ``dae/experiments/recipes/quality-natural.yaml``). Prepares the sets, trains the
blind models (a finished run is reused), evaluates every set and writes ``OUT/quality_natural.md`` and
``.json``; see :mod:`dae.experiments.quality_natural`.
"""

from __future__ import annotations

import argparse

from dae.experiments.quality_natural import QualityNaturalConfig, run
from dae.jobutil import cli, config_parser, stage_config


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return config_parser(__doc__, QualityNaturalConfig, add_help, presets="quality-natural")


def main(args: argparse.Namespace) -> dict:
    """Returns what OUT/quality_natural.json holds."""
    return run(stage_config(args, QualityNaturalConfig))


if __name__ == "__main__":
    cli(get_args_parser(), main)
