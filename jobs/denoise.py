"""``python -m jobs.denoise``: the checkout's entry point of ``dae denoise``
(dae/commands/denoise.py holds its flags and examples)."""

from dae.commands.denoise import get_args_parser, main  # noqa: F401 - tests import them from here
from dae.jobutil import cli

if __name__ == "__main__":
    cli(get_args_parser(), main)
