"""``python -m jobs.prepare``: the checkout's entry point of ``dae prepare``
(dae/commands/prepare.py holds its flags and examples)."""

from dae.commands.prepare import get_args_parser, main  # noqa: F401 - tests import them from here
from dae.jobutil import cli

if __name__ == "__main__":
    cli(get_args_parser(), main)
