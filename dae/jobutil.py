"""Small pieces every job uses: logging, the resolved config next to the outputs, progress lines."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from typing import Any, Callable

from . import paths, storage
from .config import RUN_KEY, add_config_args, config_dict, resolve_config

log = logging.getLogger("dae")


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at emit time (pytest and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _):
        pass


def config_parser(doc: str, cls, add_help: bool = True, s3: bool = True,
                  presets: str | None = None) -> argparse.ArgumentParser:
    """A stage job's parser: its docstring as help, ``--config PRESET``, one flag per field of the
    config dataclass ``cls``, and (``s3``) the S3 connection flags. ``presets``: the prefix of the
    job's preset names (``train``: ``train-*``), the only ones ``--config`` lists and takes by name."""
    parser = argparse.ArgumentParser(description=doc, add_help=add_help,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, cls, presets)
    if s3:
        storage.add_s3_args(parser)
    add_run_args(parser)
    return parser


LOG_LEVELS = ("debug", "info", "warning", "error")
# How the job talks to dae.raylib.init_ray (which starts Ray, maybe in a later module): environment
# variables, so that the processes a job starts (tune trials, benchmark jobs) inherit them too.
LOG_LEVEL_ENV = "DAE_LOG_LEVEL"
DASHBOARD_ENV = "DAE_RAY_DASHBOARD"


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """How a job talks, not what it computes (so not config fields, not in config.resolved.json)."""
    g = parser.add_argument_group("output and Ray")
    g.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                   help=f"what the job and Ray log (default: info; or ${LOG_LEVEL_ENV})")
    g.add_argument("-q", "--quiet", action="store_const", dest="log_level", const="warning",
                   help="warnings, errors and the final summary only (= --log-level warning): no progress lines, "
                        "no Ray Data progress, no worker output")
    g.add_argument("--assume-shared-fs", action="store_true",
                   help="on a multi-node cluster, trust that the local paths given are one shared mount on every "
                        "node (skips the check that each node sees them as the driver does: dae.paths)")
    g.add_argument("--dashboard", action="store_true",
                   help="a local Ray (no RAY_ADDRESS) starts with its dashboard (http://127.0.0.1:8265; it "
                        "needs ray[default]); a cluster's dashboard is the cluster's")


def apply_run_args(args: argparse.Namespace) -> None:
    level = getattr(args, "log_level", None) or os.environ.get(LOG_LEVEL_ENV) or "info"
    if level not in LOG_LEVELS:
        raise ValueError(f"{LOG_LEVEL_ENV}={level!r}: valid levels: {', '.join(LOG_LEVELS)}")
    os.environ[LOG_LEVEL_ENV] = level
    if getattr(args, "dashboard", False):
        os.environ[DASHBOARD_ENV] = "1"
    setup_logging(getattr(logging, level.upper()))


def stage_config(args: argparse.Namespace, cls):
    """What every stage job does before its stage: logging, S3 settings from the flags, and the
    config resolved from defaults <- preset <- flags."""
    apply_run_args(args)
    storage.configure_from_args(args)
    cfg = resolve_config(cls, args)
    paths.check_relative(cfg)  # under `ray job submit`: relative paths refused (dae.paths says why)
    paths.declare(cfg, assume_shared_fs=getattr(args, "assume_shared_fs", False))
    return cfg


def log_level() -> int:
    """The job's --log-level (or $DAE_LOG_LEVEL) as a logging level; info when unset."""
    return getattr(logging, os.environ.get(LOG_LEVEL_ENV, "info").upper(), logging.INFO)


def setup_logging(level: int | None = None) -> None:
    """The "dae" logger on stdout at ``level`` (default: the job's --log-level, else info)."""
    if level is None:
        level = log_level()
    if not log.handlers:
        h = _StdoutHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S"))
        log.addHandler(h)
        log.propagate = False
    log.setLevel(level)


def slug(s: str) -> str:
    """A file-name-safe form of a label (``gaussian:0.5`` -> ``gaussian_0.5``)."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", s).strip("_")


def save_resolved_config(cfg, out_dir: str, name: str = "config.resolved.json", **extra) -> str:
    """OUT_DIR/NAME: the config's fields at the top level, and what the job found out about its run
    (``extra``: data mode, resources, the model's config, ...) under the one reserved key ``_run``
    (dae.config.RUN_KEY), which ``--config`` skips: the file given back to the same job's ``--config``
    reruns the run (values redacted as secrets aside)."""
    path = storage.join(out_dir, name)
    record = config_dict(cfg)
    if extra:
        record[RUN_KEY] = extra
    # redact: URIs with userinfo, secret-looking keys and live AWS credential values never hit disk.
    storage.write_json(path, storage.redact(record))
    return path


class Progress:
    """'done/total, rate/s, ETA' lines at most every ``every`` seconds, for long loops."""

    def __init__(self, what: str, total: int | None = None, every: float = 10.0, unit: str = "images"):
        self.what, self.total, self.every, self.unit = what, total, every, unit
        self.start = self.last = time.perf_counter()
        self.done = 0
        self.said = -1  # ``done`` at the last line

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self.report()

    def finish(self) -> None:
        """The closing line, unless the last line already said the same count (a slow last batch
        printed it twice)."""
        if self.said != self.done:
            self.report()

    def report(self) -> None:
        self.said = self.done
        el = time.perf_counter() - self.start
        rate = self.done / el if el > 0 else 0.0
        eta = f", ETA {(self.total - self.done) / rate:.0f}s" if self.total and rate > 0 else ""
        tot = f"/{self.total}" if self.total else ""
        log.info("%s: %d%s %s, %.1f %s/s, %.0fs elapsed%s", self.what, self.done, tot, self.unit,
                 rate, self.unit, el, eta)


# Errors a user can cause and fix (bad flag values, missing or malformed inputs, storage access,
# failed-row thresholds): one line on stderr, not a traceback. Anything else is a bug and keeps it.
EXPECTED_ERRORS = (ValueError, OSError, RuntimeError)


def _user_error(e: BaseException) -> BaseException | None:
    """The expected error behind ``e``, else None. Ray wraps a task's error (in ``cause``, and Ray
    Data once more in ``__cause__``): the user's error is the first non-Ray one down that chain."""
    seen: list[BaseException] = []
    while e is not None and e not in seen and len(seen) < 8:
        seen.append(e)
        if isinstance(e, EXPECTED_ERRORS) and type(e).__module__.split(".")[0] != "ray":
            return e
        e = getattr(e, "cause", None) or e.__cause__
    return None


def cli(parser: argparse.ArgumentParser, main: Callable[..., Any], argv: list[str] | None = None, **kwargs) -> Any:
    """``if __name__ == "__main__"`` of every job (and each ``dae COMMAND``): parses the command line
    (``argv``, else sys.argv) and runs ``main``. An expected error becomes ``error: <what is wrong and
    how to fix it>`` on stderr and exit code 2; ``--debug`` shows the Python traceback instead."""
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    args = parser.parse_args(argv)
    try:
        return main(args, **kwargs)
    except Exception as e:  # noqa: BLE001 - sorted into expected (one line) and bugs (traceback) below
        err = _user_error(e)
        if err is None or args.debug:
            raise
        print(f"error: {' '.join(str(err).split())} (--debug shows the traceback)", file=sys.stderr, flush=True)
        sys.exit(2)
