"""The ``dae`` command: one subcommand per job, the same flags and presets as ``python -m jobs.NAME``.

    dae --help                      # the commands
    dae denoise --help              # a command's flags, presets and examples
    dae denoise --input photos/ --model pretrained:auto --output out/photos
    dae models                      # the shipped models and their scores

Each command is a module of :mod:`dae.commands` with ``get_args_parser()`` and ``main(args)``; the
checkout's ``jobs/NAME.py`` are thin entry points to the same modules. ``pip install .`` installs this
command (``[project.scripts]`` in pyproject.toml), the presets and the shipped models.
"""

from __future__ import annotations

import importlib
import sys

from .commands import COMMANDS  # the table lives with the commands: dae.config reads it too


def _summary(module: str) -> str:
    # The module's docstring read from its source, not imported: `dae --help` would import torch and Ray.
    import ast
    from importlib.util import find_spec

    with open(find_spec(f"dae.commands.{module}").origin, encoding="utf-8") as fh:
        doc = ast.get_docstring(ast.parse(fh.read())) or ""
    first = " ".join(doc.strip().split("\n\n")[0].split())  # the first paragraph, on one line
    return first.split(": ")[0] if len(first) > 90 else first


def usage() -> str:
    from . import __version__

    width = max(map(len, COMMANDS))
    lines = [f"dae {__version__}: train convolutional denoisers with Ray Train and denoise image collections with "
             "Ray Data.", "", "usage: dae COMMAND [flags]   (dae COMMAND --help: its flags, presets and examples)",
             "", "commands:"]
    lines += [f"  {name:{width}s}  {_summary(mod)}" for name, mod in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[0] == "--version":
        from . import __version__

        print(f"dae {__version__}")
        return
    name = argv[0]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; valid: {', '.join(COMMANDS)} (dae --help)", file=sys.stderr)
        sys.exit(2)
    from .jobutil import cli

    mod = importlib.import_module(f"dae.commands.{COMMANDS[name]}")
    parser = mod.get_args_parser()
    parser.prog = f"dae {name}"
    rc = cli(parser, mod.main, argv=argv[1:])
    if isinstance(rc, int) and not isinstance(rc, bool):  # a job whose main returns its exit code (gpu-check)
        sys.exit(rc)


if __name__ == "__main__":
    main()
