"""The `dae` command (dae.cli): one subcommand per job with the job's own parser, `dae models`."""

import json
import subprocess
import sys

import pytest

from dae import cli
from dae.commands import models as models_cmd
from helpers import REPO


def test_every_command_has_its_module_parser_and_summary():
    for name, module in cli.COMMANDS.items():
        mod = __import__(f"dae.commands.{module}", fromlist=["get_args_parser", "main"])
        assert callable(mod.main) and mod.get_args_parser().parse_known_args([]) is not None, name
        assert cli._summary(module), name
    text = cli.usage()
    assert all(f"  {n} " in text for n in cli.COMMANDS)


def test_help_lists_the_commands_without_importing_torch_or_ray():
    code = ("import sys; from dae import cli; cli.main(['--help']); "
            "print('heavy:', sorted(m for m in ('torch', 'ray', 'dae.commands.train') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0 and "  denoise " in p.stdout and "heavy: []" in p.stdout, p.stderr


def test_every_checkout_job_is_a_command():
    import os

    jobs = {n[:-3] for n in os.listdir(os.path.join(REPO, "jobs")) if n.endswith(".py") and n != "__init__.py"}
    assert jobs == set(cli.COMMANDS.values())


def test_unknown_command_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["trian"])
    assert e.value.code == 2
    assert "error: unknown command 'trian'; valid: denoise, train, prepare" in capsys.readouterr().err


def test_a_command_runs_with_its_flags_and_one_line_errors():
    p = subprocess.run([sys.executable, "-m", "dae.cli", "train", "--epochs", "x"], capture_output=True, text=True)
    assert p.returncode == 2 and "dae train: error: argument --epochs" in p.stderr
    p = subprocess.run([sys.executable, "-m", "dae.cli", "denoise", "--input", "/nonexistent/in", "--model",
                        "pretrained:nope", "--output", "/tmp/x/out"], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_models_lists_the_shipped_models_with_scores(capsys):
    got = models_cmd.main(models_cmd.get_args_parser().parse_args(["--json"]))
    assert json.loads(capsys.readouterr().out) == got
    by = {m["name"]: m for m in got}
    assert by["pretrained:gray-blind"]["channels"] == 1 and by["pretrained:color-blind"]["channels"] == 3
    assert by["pretrained:gray-blind"]["scores"]["BSD68"]["awgn:25"] > 28
    models_cmd.main(models_cmd.get_args_parser().parse_args([]))
    text = capsys.readouterr().out
    assert "pretrained:color-blind: color images" in text and "CBSD68" in text and "README.md" in text
