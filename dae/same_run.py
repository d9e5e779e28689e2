"""One way to decide "is this stored result the same run as the one asked for?": used wherever a
stage or an experiment reuses, resumes or refuses what is already there (a train run resumed by its
name, a denoise output's manifest, an experiment's finished run, report or prepared data).

    diff = differences(stored, cfg, keys=RESUME_SAME)       # {"noise": ("awgn:25", "awgn:50")}
    if diff:
        raise ValueError(f"... other settings ({describe(diff)}) ...")   # "noise: 'awgn:25' -> 'awgn:50'"

Rules:
- Only the settings that change the result count (each caller names them, or all of a config's).
- A setting the stored record lacks was added since it was written: the record had its default, so a
  result made before a setting existed is still reused.
- Values are compared as their JSON form (tuples and lists alike), secrets redacted as recorded
  files hold them, through an optional ``canonical(key, value)`` (e.g. a noise spec's canonical text).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Iterable

from . import storage


def _form(value) -> Any:
    return storage.redact(json.loads(json.dumps(value, default=str)))


def differences(stored: dict, current, keys: Iterable[str] | None = None,
                canonical: Callable[[str, Any], Any] | None = None) -> dict[str, tuple]:
    """{key: (stored, current)} for every key whose values differ. ``current`` is a config dataclass
    (its defaults fill the keys ``stored`` lacks) or a plain dict; ``keys``: the ones that count
    (default: every key of either side)."""
    if dataclasses.is_dataclass(current):
        from .config import config_dict, field_default, settings

        defaults = {k: field_default(f) for k, (f, _) in settings(type(current)).items()}
        now = config_dict(current)
    else:
        defaults, now = {}, dict(current)
    keys = list(keys) if keys is not None else sorted(set(stored) | set(now))
    same = canonical or (lambda _k, v: v)
    diff = {}
    for k in keys:
        have, want = stored.get(k, defaults.get(k)), now.get(k, defaults.get(k))
        if _form(same(k, have)) != _form(same(k, want)):
            diff[k] = (have, want)
    return diff


def describe(diff: dict[str, tuple], sep: str = "; ") -> str:
    """``key: stored -> current`` for each difference."""
    return sep.join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
