"""Paths every node can see: what a job checks about its local paths before any work.

    ray job submit --working-dir . -- python -m jobs.denoise --output out/d ...   # refused, one line
    dae denoise --output /mnt/shared/out/d ... --assume-shared-fs                  # no node check

Rules:
- Under ``ray job submit --working-dir``, the driver runs in Ray's temporary copy of the working dir
  (``.../runtime_resources/working_dir_files/_ray_pkg_<hash>``): Ray deletes that copy, and a code
  change moves it, so an output written there is lost and a resubmitted training run silently starts
  over. A relative path there (input or output) is refused, naming the flag; absolute paths and URIs
  pass.
- On a multi-node cluster, a local path (not a URI) must be the same on every node: after joining
  the cluster and before any work, the driver compares what each alive node sees at each path with
  what it sees itself (an output directory: a probe file the driver wrote there; an input: its type,
  size and first entries) and refuses a path some node sees otherwise, naming the node, unless the job
  was given ``--assume-shared-fs``. A single-node Ray (a laptop) checks nothing.
- Which fields are paths: :data:`PATH_FIELDS` (per config class: "in" or "out"); ``pretrained:NAME``
  and URIs are never local paths.
No Ray import: :func:`dae.raylib.init_ray` runs the node check with what :func:`declare` recorded.
"""

from __future__ import annotations

import hashlib
import os
import uuid

from .storage import is_uri

# Per config class: field -> "in" (read) or "out" (written). The stages a user submits to a cluster.
PATH_FIELDS: dict[str, dict[str, str]] = {
    "PrepareConfig": {"input": "in", "out": "out"},
    "TrainConfig": {"data": "in", "pair_data": "in", "init": "in", "storage": "out", "out": "out"},
    "DenoiseConfig": {"input": "in", "model": "in", "output": "out", "export_png": "out", "export": "out"},
    "EvaluateConfig": {"data": "in", "models": "in", "out": "out"},
    "TuneConfig": {"data": "in", "storage": "out"},
    "DemoConfig": {"out": "out"},
}
RAY_PACKAGE_MARK = "_ray_pkg_"
PROBE_PREFIX = ".dae-node-probe-"

# What the job declared (declare()), for dae.raylib.init_ray: [(flag, absolute path, "in"|"out")].
_declared: list[tuple[str, str, str]] = []
_assume_shared = False


def local_paths(cfg) -> list[tuple[str, str, str]]:
    """[(flag, path, "in"|"out")] of the config's local paths (no URIs, no pretrained: names)."""
    out = []
    for name, kind in PATH_FIELDS.get(type(cfg).__name__, {}).items():
        value = getattr(cfg, name, None)
        for v in (value if isinstance(value, (tuple, list)) else [value]):
            if isinstance(v, str) and v and not is_uri(v) and not v.startswith("pretrained:"):
                out.append((f"--{name.replace('_', '-')}", v, kind))
    return out


def in_ray_package(cwd: str | None = None) -> bool:
    """Whether this process runs in Ray's temporary copy of a submitted working dir."""
    return RAY_PACKAGE_MARK in (cwd or os.getcwd())


def check_relative(cfg, cwd: str | None = None) -> None:
    """Refuse relative paths in a job submitted with a working dir (see the module's rules)."""
    cwd = cwd or os.getcwd()
    if not in_ray_package(cwd):
        return
    for flag, path, kind in local_paths(cfg):
        if not os.path.isabs(path):
            what = "would be written inside it and lost" if kind == "out" else "would be read from the uploaded copy"
            raise ValueError(
                f"{flag} {path!r} is a relative path, and this job runs in Ray's temporary copy of the working "
                f"dir ({cwd}), which Ray deletes and moves with every code change: the path {what}; give an "
                "absolute path every node can see, or a URI (s3://...)")


def declare(cfg, assume_shared_fs: bool = False) -> None:
    """Record the job's local paths for the node check of :func:`dae.raylib.init_ray`."""
    global _assume_shared
    _declared[:] = [(flag, os.path.abspath(p), kind) for flag, p, kind in local_paths(cfg)]
    _assume_shared = assume_shared_fs


def declared() -> tuple[list[tuple[str, str, str]], bool]:
    return list(_declared), _assume_shared


def fingerprint(path: str) -> str:
    """What a node sees at ``path``: missing, a file (its size) or a directory (its first 200 entries
    and their sizes): equal on nodes that share the file system, almost surely not otherwise."""
    if not os.path.exists(path):
        return "missing"
    if os.path.isfile(path):
        return f"file {os.path.getsize(path)}"
    h = hashlib.blake2b(digest_size=12)
    with os.scandir(path) as it:
        entries = sorted((e.name, e.stat().st_size if e.is_file() else -1) for e in it
                         if not e.name.startswith(PROBE_PREFIX))[:200]
    h.update(repr(entries).encode())
    return f"dir {h.hexdigest()}"


def write_probes(entries: list[tuple[str, str, str]]) -> dict[str, str]:
    """A probe file in each output directory (created if missing): {path: probe file}."""
    probes = {}
    for _flag, path, kind in entries:
        if kind == "out":
            os.makedirs(path, exist_ok=True)
            probe = os.path.join(path, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
            with open(probe, "w") as fh:
                fh.write("dae: written by the job's driver to see which nodes share this directory; safe to delete\n")
            probes[path] = probe
    return probes


def look(entries: list[tuple[str, str, str]], probes: dict[str, str]) -> dict[str, str]:
    """What this node sees: {path: fingerprint} for inputs, {path: "probe seen"/"no probe"} for outputs."""
    return {path: (("probe seen" if os.path.exists(probes[path]) else "no probe") if path in probes
                   else fingerprint(path)) for _flag, path, _kind in entries}


def compare(entries: list[tuple[str, str, str]], here: dict[str, str], nodes: dict[str, dict[str, str]]) -> None:
    """Raise naming the first path some node sees otherwise than the driver does."""
    for flag, path, kind in entries:
        differ = sorted(node for node, seen in nodes.items() if seen.get(path) != here.get(path))
        if differ:
            why = ("does not see the probe file the driver wrote there" if kind == "out"
                   else f"sees something else there ({nodes[differ[0]].get(path)} vs {here.get(path)} here)")
            raise ValueError(
                f"{flag} {path!r} is a local path that not every node of this cluster can see: node "
                f"{differ[0][:12]}{f' (and {len(differ) - 1} more)' if len(differ) > 1 else ''} {why}; use a URI "
                "(s3://...) or a shared mount (then add --assume-shared-fs if this check is wrong about it)")
