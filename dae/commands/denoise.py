r"""Denoise image files or shards with a trained model: streaming batch inference on Ray Data.

    dae denoise --input ~/photos --model pretrained:auto --output out/photos --export out/photos-clean
    dae denoise --input data/fashion-mnist --split test --model runs/fashion-conv28k/best_model \
        --output out/denoised
    dae denoise --config denoise-eval --input data/fashion-mnist --split test \
        --model runs/fashion-conv28k/best_model --output out/denoised-eval      # + gaussian:0.5 noise, metrics
    ray job submit --working-dir . -- python -m jobs.denoise --config denoise-gpu \
        --input s3://bucket/shards/test --model s3://bucket/models/unet --output s3://bucket/denoised

``--input`` is a folder, a quoted glob or an s3:// prefix of image files (PNG, JPEG, TIFF incl. 16-bit,
BMP, WebP; recursive; ids are the paths under it; EXIF orientation applied), or Parquet shards
(``dae prepare``). ``--export DIR`` also writes each denoised image at its input's relative path under DIR.
``--model`` is a model directory or ``pretrained:NAME`` (``dae models``); ``pretrained:auto`` picks the
gray or color model per image.

Every field of :class:`dae.denoise.DenoiseConfig` is a flag; values come from defaults <- ``--config``
preset (``dae/presets/denoise-*.yaml``) <- flags. Ray workers write the outputs; the driver keeps
the books (see :mod:`dae.denoise.pipeline`). Output layout (:mod:`dae.denoise.outputs`)::

    OUTPUT/data/<stem>/part-*.parquet     denoised rows of input file <stem> (its path under --input)
    OUTPUT/errors/<stem>/part-*.parquet   rows that failed (id, reason, stage, input)
    OUTPUT/_done/<stem>.json              the marker committing <stem>: lists its parts, written last
    OUTPUT/_manifest.json, OUTPUT/_lease.json   the run's settings; the one writer's lease
    OUTPUT/summary.json, OUTPUT/samples.png, OUTPUT/config.resolved.json

Read the committed rows with ``dae.denoise.read_outputs(OUTPUT)``. A rerun mirrors the input: unchanged
files are skipped unread, changed and new ones done, removed ones retired (``--keep-removed`` keeps
them); other settings into the same OUTPUT are refused (``--overwrite`` replaces it); every input id
lands exactly once in data or errors (rules: :mod:`dae.denoise.rerun`). More: docs/denoising.md.
"""

from __future__ import annotations

import argparse

from dae.denoise import DenoiseConfig, run
from dae.jobutil import cli, config_parser, stage_config


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return config_parser(__doc__, DenoiseConfig, add_help, presets="denoise")


def main(args: argparse.Namespace) -> dict:
    """Runs the job; returns the summary dict (also in OUTPUT/summary.json)."""
    return run(stage_config(args, DenoiseConfig))


if __name__ == "__main__":
    cli(get_args_parser(), main)
