"""``python -m jobs.bench_train``: the checkout's entry point of ``dae bench-train``
(dae/commands/bench_train.py holds its flags and examples)."""

from dae.commands.bench_train import get_args_parser, main  # noqa: F401 - tests import them from here
from dae.jobutil import cli

if __name__ == "__main__":
    cli(get_args_parser(), main)
