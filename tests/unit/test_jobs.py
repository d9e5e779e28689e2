"""What a job prints when it fails (dae.jobutil.cli): an expected error is one line on stderr and exit
code 2, ``--debug`` shows the traceback, a bug keeps its traceback. A Ray-wrapped error is in
tests/e2e/test_jobs.py."""

import argparse
import os
import subprocess
import sys

import pytest

from dae.jobutil import Progress, cli
from helpers import REPO, job_env, tail


def run_cli(*argv, timeout=120):
    return subprocess.run([sys.executable, "-m", *map(str, argv)], cwd=REPO, env=job_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("argv, says", [
    (["jobs.train", "--data", "{tmp}/missing"], "missing does not exist"),
    (["jobs.denoise", "--input", "{tmp}/missing", "--model", "{tmp}/m"], "missing does not exist"),
    (["jobs.evaluate", "--data", "{tmp}/missing"], "missing does not exist"),
    (["jobs.prepare", "--source", "idx", "--input", "{tmp}/missing"], "no train images file in"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, argv, says):
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--out", tmp_path / "out"]
    p = run_cli(*argv)
    assert p.returncode == 2, tail(p)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: ") and says in p.stderr, tail(p)
    assert "(--debug shows the traceback)" in p.stderr and "Traceback" not in p.stdout + p.stderr

    debug = run_cli(*argv, "--debug")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr, tail(debug)
    assert says in debug.stderr.splitlines()[-1]


def test_cli_sorts_expected_errors_from_bugs(monkeypatch, capsys):
    parser = argparse.ArgumentParser()

    def main(args, exc):
        raise exc

    monkeypatch.setattr(sys, "argv", ["job"])
    with pytest.raises(SystemExit) as e:
        cli(parser, main, exc=ValueError("--noise 'gauss' is not one of\n gaussian, salt_pepper"))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: --noise 'gauss' is not one of gaussian, salt_pepper (--debug shows the traceback)\n"

    with pytest.raises(KeyError):  # a bug: the traceback, not a one-line message
        cli(argparse.ArgumentParser(), main, exc=KeyError("oops"))
    assert capsys.readouterr().err == ""

    monkeypatch.setattr(sys, "argv", ["job", "--debug"])
    with pytest.raises(FileNotFoundError):
        cli(argparse.ArgumentParser(), main, exc=FileNotFoundError("no such file"))


@pytest.mark.parametrize("job", sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "jobs"))
                                        if f.endswith(".py") and f != "__init__.py"))
def test_every_jobs_help_renders(job):
    """argparse %-formats help texts: a literal % in a config field's help once broke jobs.train --help."""
    import importlib

    assert "--" in importlib.import_module(f"jobs.{job}").get_args_parser().format_help()


def test_progress_says_the_closing_count_once():
    """A slow last batch printed its periodic line, then the closing line said the same again."""
    import logging

    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    log, keep = logging.getLogger("dae"), Keep()
    level = log.level
    log.addHandler(keep)
    log.setLevel(logging.INFO)
    try:
        slow = Progress("denoise", total=8, every=0.0)  # every update prints, as after a slow batch
        slow.update(5)
        slow.update(3)
        slow.finish()
        assert [m.split(",")[0] for m in lines] == ["denoise: 5/8 images", "denoise: 8/8 images"]
        lines.clear()
        fast = Progress("evaluate", total=8, every=1e9, unit="rows")  # no periodic line: finish says it
        fast.update(8)
        fast.finish()
        assert [m.split(",")[0] for m in lines] == ["evaluate: 8/8 rows"]
    finally:
        log.removeHandler(keep)
        log.setLevel(level)
