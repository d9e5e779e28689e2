"""``python -m jobs.gpu_check``: the checkout's entry point of ``dae gpu-check``
(dae/commands/gpu_check.py holds its flags and examples)."""

import sys

from dae.commands.gpu_check import get_args_parser, main  # noqa: F401 - tests import them from here
from dae.jobutil import cli

if __name__ == "__main__":
    sys.exit(cli(get_args_parser(), main))  # main returns the check's exit code
