"""``python -m jobs.quality_sweep``: the checkout's entry point of ``dae quality-sweep``
(dae/commands/quality_sweep.py holds its flags and examples)."""

from dae.commands.quality_sweep import get_args_parser, main  # noqa: F401 - tests import them from here
from dae.jobutil import cli

if __name__ == "__main__":
    cli(get_args_parser(), main)
