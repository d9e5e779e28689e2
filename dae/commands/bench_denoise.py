r"""Benchmark of the denoise job: speed against a plain script, the driver's CPU and memory, a cluster run.

    dae bench-denoise                                  # all sets: 70,000 small images, 1,728 photos x 2
    dae bench-denoise --sets color-blind               # the shipped model by precision (issue 28)
    dae bench-denoise --sets fashion --fashion-n 20000 # quicker
    dae bench-denoise --sets photos --cluster          # + a head and 2 worker nodes (cluster/local)

Two sets, each denoised by the job and by a plain script doing the same steps (read, decode, forward,
encode, write Parquet; with --noise also synthetic noise, the noisy PNG and per-image metrics):
  fashion  the 70,000 Fashion-MNIST images (28x28 gray; `make data`), model conv28k
  photos   the 432 CBSD432 photos (481x321 RGB) of ../shared/datasets/natural, repeated with new ids
           up to --photos-n (default 1,728), model unet (width 16)
and color-blind: the photos with pretrained:color-blind at awgn:25, the job in fp32 and by default, on a
CPU made to look as if without native bf16, a plain bf16 script, and the forward pass's GFLOP/s against
the machine's peaks (:mod:`dae.experiments.bench.precision` says what each part is).

For each set it prints:
  - the plain script: one process, one torch thread, no Ray, with the job's forward-pass sizes;
  - the job (``dae denoise``, default flags, its own local Ray) on N/4 and on N images, with
    the CPU seconds of every process of the job (driver, GCS, raylet, workers, actors; sampled from
    /proc) and the driver's own CPU seconds and peak RSS (from its summary.json): the driver's share,
    its seconds per image (whole run, and marginal: the difference between N and N/4), the Amdahl
    ceiling (all CPU / driver CPU), job images/s against the script, and the driver's peak RSS at N/4
    and N;
  - with --cluster: the same job on a 3-node local cluster (head + 2 worker nodes, 2 CPUs each), the
    rows written by each node, and the exactly-once check on the committed outputs.
Not a test: figures vary with the machine and its load. Inputs are written once to WORK and reused. The plain
script is :func:`dae.experiments.reference.plain_denoise`; every field of
:class:`dae.experiments.bench.denoise.BenchDenoiseConfig` is a flag.
"""

from __future__ import annotations

import argparse

from dae.experiments.bench.denoise import BenchDenoiseConfig, run
from dae.jobutil import cli, config_parser, stage_config


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return config_parser(__doc__, BenchDenoiseConfig, add_help, s3=False, presets="bench-denoise")


def main(args: argparse.Namespace) -> dict:
    return run(stage_config(args, BenchDenoiseConfig))


if __name__ == "__main__":
    cli(get_args_parser(), main)
