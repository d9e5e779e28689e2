"""``python -m jobs.demo``: the checkout's entry point of ``dae demo``
(dae/commands/demo.py holds its flags and examples)."""

from dae.commands.demo import get_args_parser, main  # noqa: F401 - tests import them from here
from dae.jobutil import cli

if __name__ == "__main__":
    cli(get_args_parser(), main)
