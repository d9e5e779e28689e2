"""``python -m jobs.quality_train``: the checkout's entry point of ``dae quality-train``
(dae/commands/quality_train.py holds its flags and examples)."""

from dae.commands.quality_train import get_args_parser, main  # noqa: F401 - tests import them from here
from dae.jobutil import cli

if __name__ == "__main__":
    cli(get_args_parser(), main)
