"""The README's commands run as written: every `dae COMMAND ...` and `python -m jobs.NAME ...` line of the
code blocks of README.md and docs/*.md parses with that command's own parser (a flag it does not know fails
here), the cheap ones run for real (`dae --help`, `dae models`, `dae train --help`), the `make` targets the
README names exist, and the relative links of README.md and docs/*.md resolve (files and #anchors).

No Ray is started: parsing builds the parsers only, and the commands run for real print help or a table.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import pytest

from dae import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(REPO, "README.md")
DOCS = os.path.join(REPO, "docs")
DOC_FILES = [README] + sorted(os.path.join(DOCS, n) for n in os.listdir(DOCS) if n.endswith(".md"))
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
PYTHONS = {"python", "python3"}
SEPARATORS = {"&&", "||", ";", "|"}
DUMMY = "/tmp/dae-readme-dummy"  # what a shell variable ($OUT, ${DATA}) stands for when parsing
# Run for real: cheap (help texts, the models table), whether or not a code block shows them.
CHEAP = [["--help"], ["models"], ["train", "--help"]]


@dataclass(frozen=True)
class Command:
    where: str   # file:line
    text: str    # the command as written (continuation lines joined)
    module: str  # dae.commands.MODULE
    argv: tuple  # its flags


def rel(path: str) -> str:
    return os.path.relpath(path, REPO)


def shell_lines(path: str) -> list[tuple[int, str]]:
    """(line number, text) of the shell lines of a markdown file: fenced blocks in a shell language (or none)
    and indented (4+ spaces) blocks after a blank line; a `\\`-continued line is joined with the next, and
    so is a line whose quotes are not closed yet."""
    lines = open(path, encoding="utf-8").read().split("\n")
    found, fence, indented, prev_blank = [], None, False, True
    for i, line in enumerate(lines, 1):
        stripped = line.strip()
        if fence is not None:
            if stripped.startswith("```"):
                fence = None
            elif fence in SHELL_LANGS:
                found.append((i, line))
            continue
        if stripped.startswith("```"):
            fence = stripped[3:].strip().lower()
            continue
        if line.startswith("    ") and stripped and (prev_blank or indented):
            indented = True
            found.append((i, line))
        elif stripped:
            indented = False
        prev_blank = not stripped
    out, i = [], 0
    while i < len(found):
        start, text = found[i]
        while i + 1 < len(found) and (text.rstrip().endswith("\\") or not _quotes_closed(text)):
            i += 1
            text = text.rstrip().removesuffix("\\") + " " + found[i][1].strip()
        out.append((start, text.strip()))
        i += 1
    return out


def _quotes_closed(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
        return True
    except ValueError:
        return False


def _substitute(token: str) -> str:
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", DUMMY, token)


def _segments(tokens: list[str]) -> list[list[str]]:
    segs, cur = [], []
    for t in tokens:
        if t in SEPARATORS:
            segs.append(cur)
            cur = []
        else:
            cur.append(t)
    return segs + [cur]


def command_of(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(dae.commands module, argv) when the tokens run a dae command, else None."""
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    if tokens[:3] == ["ray", "job", "submit"]:
        if "--" not in tokens:
            return None
        tokens = tokens[tokens.index("--") + 1:]
    if not tokens:
        return None
    head = os.path.basename(tokens[0])
    if head == "dae":
        if len(tokens) < 2 or tokens[1].startswith("-"):
            return ("", tokens[1:])  # `dae --help`, `dae --version`: the top level
        if tokens[1] not in cli.COMMANDS:
            return ("?" + tokens[1], tokens[2:])
        return (cli.COMMANDS[tokens[1]], tokens[2:])
    if head in PYTHONS and len(tokens) >= 3 and tokens[1] == "-m":
        if tokens[2] == "dae.cli":
            return command_of(["dae"] + tokens[3:])
        if tokens[2].startswith("jobs."):
            name = tokens[2][len("jobs."):]
            if not os.path.isfile(os.path.join(REPO, "jobs", f"{name}.py")):
                return ("?" + tokens[2], tokens[3:])
            return (name, tokens[3:])
    return None


def commands(path: str) -> list[Command]:
    out = []
    for line, text in shell_lines(path):
        try:
            tokens = [_substitute(t) for t in shlex.split(text, comments=True)]
        except ValueError:
            continue
        for seg in _segments(tokens):
            found = command_of(seg)
            if found:
                module, argv = found
                argv = tuple(a for a in argv if a != "...")  # "...": more flags, as a placeholder
                out.append(Command(f"{rel(path)}:{line}", text, module, argv))
    return out


def parse_error(cmd: Command) -> str | None:
    """None when the command's own parser takes its flags, else the parser's complaint."""
    if cmd.module.startswith("?"):
        return f"no such command {cmd.module[1:]!r} (dae commands: {', '.join(cli.COMMANDS)})"
    if cmd.module == "":
        return None if set(cmd.argv) <= {"--help", "-h", "--version", "help"} else "dae takes a command first"
    if {"-h", "--help"} & set(cmd.argv):
        return None  # help: nothing to parse (the cheap ones run for real below)
    parser = importlib.import_module(f"dae.commands.{cmd.module}").get_args_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(list(cmd.argv))
    except SystemExit as e:
        return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {e.code}"
    return None


README_COMMANDS = commands(README)
DOC_COMMANDS = [c for p in DOC_FILES[1:] for c in commands(p)]


def test_the_readme_shows_the_main_commands():
    shown = {c.module for c in README_COMMANDS}
    assert {"denoise", "train", "prepare", "evaluate", "models"} <= shown, shown
    assert len(README_COMMANDS) >= 10, [c.text for c in README_COMMANDS]


@pytest.mark.parametrize("where", ["README.md", "docs"])
def test_every_command_parses_with_its_own_parser(where):
    cmds = README_COMMANDS if where == "README.md" else DOC_COMMANDS
    bad = [f"{c.where}: {c.text}\n    -> {err}" for c in cmds if (err := parse_error(c))]
    assert not bad, (f"{len(bad)} command(s) in {where} do not parse as written (a flag the command does not "
                     "know, or a bad value):\n" + "\n".join(bad))


def test_a_flag_the_parser_does_not_know_fails():
    (cmd,) = [c for c in commands_from_text("dae train --data d --no-such-flag 3") if c]
    assert "unrecognized arguments: --no-such-flag" in parse_error(cmd)
    (cmd,) = commands_from_text("ray job submit --working-dir . -- python -m jobs.denoise --input $IN \\\n"
                                "    --model pretrained:auto --output /o --bogus")
    assert cmd.module == "denoise" and DUMMY in cmd.argv and "--bogus" in parse_error(cmd)
    (cmd,) = commands_from_text("dae nosuch --x")
    assert "no such command" in parse_error(cmd)


def commands_from_text(text: str) -> list[Command]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "snippet.md")
        with open(path, "w") as fh:
            fh.write("```bash\n" + text + "\n```\n")
        return commands(path)


def test_the_cheap_commands_run():
    name_of = {module: name for name, module in cli.COMMANDS.items()}
    shown = [list(c.argv) if c.module == "" else [name_of[c.module], *c.argv] for c in README_COMMANDS
             if c.module == "" or c.module == "models" or {"-h", "--help"} & set(c.argv)]
    runs = [(argv, subprocess.Popen([sys.executable, "-m", "dae.cli", *argv], cwd=REPO, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            for argv in CHEAP + [a for a in shown if a not in CHEAP]]
    for argv, proc in runs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"dae {' '.join(argv)}: exit {proc.returncode}\n{err[-2000:]}"
        assert out.strip(), f"dae {' '.join(argv)} printed nothing"
        if argv == ["models"]:
            assert "pretrained:gray-blind" in out and "pretrained:color-blind" in out, out
        if argv == ["--help"]:
            assert all(f"  {name} " in out for name in cli.COMMANDS), out


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_commands_help_shows_its_examples_as_written(name):
    """A job's --help is its module docstring, raw: examples one per line (no backslash-newline of a normal
    string running them together), each parsing with the job's own parser."""
    module = cli.COMMANDS[name]
    doc = importlib.import_module(f"dae.commands.{module}").__doc__
    assert doc and "\\\\\n" not in doc, f"dae {name}: a doubled backslash at a line's end"
    together = [line for line in doc.splitlines() if len(re.findall(r"(?:^|\s)dae [a-z][a-z-]* -", line)) > 1]
    assert not together, f"dae {name}: examples run together: {together}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{module}.md")
        with open(path, "w") as fh:
            fh.write(doc)
        examples = commands(path)
    bad = [f"{c.text}\n    -> {err}" for c in examples if (err := parse_error(c))]
    assert not bad, f"dae {name}: examples in its docstring that do not parse:\n" + "\n".join(bad)


def test_the_make_targets_named_exist():
    makefile = open(os.path.join(REPO, "Makefile"), encoding="utf-8").read()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+):", makefile, re.M))
    text = open(README, encoding="utf-8").read()
    named = set(re.findall(r"(?<![\w/.-])make ([a-z][a-z0-9-]*)", text))
    assert {"demo", "test"} <= named, named
    assert named <= targets, f"make targets named in README.md but not in the Makefile: {sorted(named - targets)}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: str) -> set[str]:
    seen, out, fence = {}, set(), False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fence = not fence
        m = None if fence else re.match(r"#{1,6} (.+)", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def links(path: str) -> list[tuple[int, str]]:
    out, fence = [], False
    for i, line in enumerate(open(path, encoding="utf-8"), 1):
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if fence or line.startswith("    "):
            continue
        line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        out += [(i, t) for t in re.findall(r"\]\(([^)\s]+)\)", line)]
        out += [(i, t) for t in re.findall(r"<img [^>]*src=\"([^\"]+)\"", line)]
    return out


@pytest.mark.parametrize("path", DOC_FILES, ids=rel)
def test_relative_links_resolve(path):
    bad = []
    for line, target in links(path):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not os.path.exists(dest):
            bad.append(f"{rel(path)}:{line}: {target} (no such file: {rel(dest)})")
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            bad.append(f"{rel(path)}:{line}: {target} (no heading #{anchor} in {rel(dest)})")
    assert not bad, "\n".join(bad)


def test_the_readme_links_every_docs_page():
    text = open(README, encoding="utf-8").read()
    missing = [rel(p) for p in DOC_FILES[1:] if f"]({rel(p)}" not in text]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_the_readme_stays_short():
    n = len(open(README, encoding="utf-8").read().splitlines())
    assert n <= 260, f"README.md has {n} lines: the reference belongs in docs/"
