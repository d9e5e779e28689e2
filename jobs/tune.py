"""``python -m jobs.tune``: the checkout's entry point of ``dae tune``
(dae/commands/tune.py holds its flags and examples)."""

from dae.commands.tune import get_args_parser, main  # noqa: F401 - tests import them from here
from dae.jobutil import cli

if __name__ == "__main__":
    cli(get_args_parser(), main)
