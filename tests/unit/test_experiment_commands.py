"""Every command line the project gives for its experiment jobs (the Makefile's targets, the README,
the jobs' docstrings) parses with the job's own parser into its config, and the benchmark jobs'
flags keep the names and defaults they had as plain argparse flags. No Ray: nothing runs."""

import dataclasses
import importlib
import os
import re
import shlex

import pytest

from dae.config import resolve_config
from helpers import REPO

JOBS = ("bench_train", "bench_denoise", "quality_train", "quality_sweep", "quality_natural", "quality_selfsup",
        "gpu_check", "demo")
TARGETS = {"bench-train": "bench_train", "bench-denoise": "bench_denoise", "quality-train": "quality_train",
           "quality-sweep": "quality_sweep", "quality-natural": "quality_natural",
           "quality-selfsup": "quality_selfsup", "gpu-check": "gpu_check", "demo": "demo"}
# `python -m jobs.NAME` (the checkout's entry points) or `dae NAME-WITH-DASHES` (the installed command).
COMMAND = re.compile(r"python3? -m jobs\.(\w+)|\bdae ([a-z][\w-]*)")


def _name(c: re.Match) -> str:
    return c.group(1) or c.group(2).replace("-", "_")


def _config_class(job):
    return next(v for v in vars(job).values() if isinstance(v, type) and dataclasses.is_dataclass(v)
                and v.__name__.endswith("Config"))


def parse(name: str, argv: list[str]):
    """The job's config from ``argv``, as the job resolves it (defaults <- preset <- flags)."""
    job = importlib.import_module(f"dae.commands.{name}")
    return resolve_config(_config_class(job), job.get_args_parser().parse_args(argv))


def _read(path: str) -> str:
    with open(os.path.join(REPO, path)) as fh:
        return fh.read()


def makefile_commands() -> dict[str, list[str]]:
    """target -> the argv of its ``python -m jobs.X`` line."""
    out, target = {}, None
    for line in _read("Makefile").splitlines():
        m = re.match(r"^([\w-]+):", line)
        if m:
            target = m.group(1)
        c = COMMAND.search(line)
        if line.startswith("\t") and c and target in TARGETS:
            out[target] = [_name(c)] + shlex.split(line[c.end():])
    return out


def _code_commands(text: str):
    """Commands on indented code lines (4+ spaces), continued over lines ending in a backslash or
    inside an open quote; a trailing ``# comment`` dropped."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        c = COMMAND.search(line)
        if not c or not line.startswith("    ") or "`" in line[:c.start()]:
            continue
        cmd, j = line[c.start():], i
        while True:
            try:
                words = shlex.split(cmd.replace("\\\n", " "), comments=True)
                if not cmd.rstrip().endswith("\\"):
                    break
            except ValueError:  # an open quote: the command goes on
                pass
            j += 1
            cmd += "\n" + lines[j].strip()
        yield [_name(c), *words[len(COMMAND.match(cmd).group(0).split()):]]


def _inline_commands(text: str):
    """Commands in backticks in prose (they may wrap across lines; not fenced blocks)."""
    for m in re.finditer(r"(?<!`)(`{1,2})(?!`)(.+?)(?<!`)\1(?!`)", text, re.S):
        span = m.group(2)
        c = COMMAND.search(span)
        if c:
            yield [_name(c), *shlex.split(" ".join(span[c.end():].split()))]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every experiment-job command in the README and the jobs' docstrings."""
    out = []
    for path in ["README.md"] + [f"dae/commands/{j}.py" for j in JOBS]:
        text = _read(path)
        if path.endswith(".py"):
            text = importlib.import_module(f"dae.commands.{j_of(path)}").__doc__
        for name, *argv in [*_code_commands(text), *_inline_commands(text)]:
            if name in JOBS:
                out.append((f"{path}: {name} {' '.join(argv)}", [name, *argv]))
    return out


def j_of(path: str) -> str:
    return os.path.basename(path)[:-3]


def test_every_make_target_names_its_job():
    assert set(makefile_commands()) == set(TARGETS)
    for target, argv in makefile_commands().items():
        assert argv[0] == TARGETS[target], target


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_each_make_targets_command_line_parses_into_its_config(target):
    name, *argv = makefile_commands()[target]
    cfg = parse(name, argv)
    flags = dict(zip(argv[::2], argv[1::2]))  # every flag of these targets takes one value
    for flag, value in flags.items():
        field = flag[2:].replace("-", "_")
        if field != "config":
            assert str(getattr(cfg, field)) == value, (target, flag)


def test_the_readme_and_the_docstrings_commands_parse():
    found = documented_commands()
    assert {argv[0] for _, argv in found} == set(JOBS)
    for where, argv in found:
        try:
            parse(argv[0], argv[1:])  # a bad flag exits (SystemExit), a bad value raises
        except (SystemExit, ValueError) as e:
            raise AssertionError(f"{where}: does not parse ({e!r})") from None


# What the benchmark jobs' flags were as plain argparse flags: the same names, defaults and meaning (issue 28
# added the precision and compile runs and the color-blind set to the defaults, issue 29 the files set).
BEFORE = {
    "bench_train": {"data": "/tmp/dae-fashion-shards", "images": 20000, "val_images": 1000, "model": "conv28k",
                    "noise": "gaussian:0.5", "batch_size": 128, "epochs": 2,
                    "runs": "plain,job1,job2,precision,compile", "data_mode": "auto", "work": "/tmp/dae-bench",
                    "worker_niceness": 0},
    "bench_denoise": {"sets": "fashion,photos,color-blind,files", "fashion_n": 70_000, "photos_n": 1_728,
                      "work": "bench_out/denoise", "noise": "", "job_args": "", "skip": "", "cluster": False},
    "quality_train": {"data": "/tmp/dae-fashion-shards", "model": "conv28k", "noise": "gaussian:0.5",
                      "epochs": 10, "batch_size": 128, "lr": 2e-3, "seed": 0, "runs": "plain,job1,job2",
                      "out": "/tmp/dae-quality"},
    "gpu_check": {"device": "cuda", "small": False, "dry_run": False, "out": "gpu_check_out", "work": ""},
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_benchmark_flags_keep_their_names_and_defaults(name):
    cfg = parse(name, [])
    assert {k: getattr(cfg, k) for k in BEFORE[name]} == BEFORE[name]
    assert {k: type(getattr(cfg, k)) for k in BEFORE[name]} == {k: type(v) for k, v in BEFORE[name].items()}


def test_benchmark_flags_take_their_values():
    cfg = parse("bench_denoise", ["--sets", "photos", "--cluster", "--job-args", "--tile 256", "--fashion-n", "5"])
    assert (cfg.sets, cfg.cluster, cfg.job_args, cfg.fashion_n) == ("photos", True, "--tile 256", 5)
    assert parse("gpu_check", ["--dry-run", "--work", "/tmp/w"]).dry_run
    with pytest.raises(SystemExit):  # a choice outside the valid ones: argparse's usage error, as before
        parse("gpu_check", ["--device", "tpu"])
    with pytest.raises(SystemExit):
        parse("bench_train", ["--data-mode", "nope"])
