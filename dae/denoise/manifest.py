"""The output's manifest: one file saying which run's outputs OUT holds, and which markers count.

    OUT/_manifest.json   {"layout", "generation", "fingerprint", "settings": {...}, "created_at"}

Rules:
- ``settings`` names everything that changes the output pixels (model weights and config, noise,
  seed, sigma, channel conversion, the bomb guard, and the forward settings: the inference spec's
  ``fingerprint_fields``, i.e. tiling, forward sizes, determinism, device class, precision,
  ensemble) and the input root and split (the marker names are paths under that root).
  ``fingerprint`` is their hash; every marker carries it too. A key added or renamed here (or in
  ``fingerprint_fields``) makes every existing output refuse its next run.
- A run whose settings differ from the manifest's is refused before it writes anything, naming
  every differing field, whichever input files it covers: one output is one run's result. The way
  out is a new --output, or --overwrite.
- ``generation`` says which markers count: :func:`dae.denoise.reader.read_outputs` reads only the
  markers of the manifest's generation. ``--overwrite`` writes a manifest with a new generation
  FIRST (one atomic write: from then on the old markers no longer count, and readers see an empty
  output), and only then deletes the old markers and parts. A kill at any point leaves the old
  committed view (before that write) or the new one (after it); what is left over is deleted by the
  next run.
- An output with markers and no manifest was written by an earlier dae (layout 3): it is refused
  with the way out (--overwrite or a new --output), never guessed at.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

from .. import checkpoint, same_run, storage
from ..inference_spec import InferenceSpec
from ..same_run import describe
from .config import DenoiseConfig

NAME = "_manifest.json"
LAYOUT = 4  # 4: the manifest, generations, input identities in markers; 3 added noise_sigma


def path(out: str) -> str:
    return storage.join(out, NAME)


def settings(cfg: DenoiseConfig, model_cfg: dict, spec: InferenceSpec, kind: str = "shards") -> dict:
    """Everything the output values depend on, by name (not batch sizes or actor counts: with
    deterministic forward passes the outputs do not depend on them). ``spec``: the forward settings
    as the actors run them, placed on the plan's device. ``kind`` "files" (image files) adds how
    files are decoded and grouped; ``pretrained:auto`` records each of its models."""
    from .auto import is_auto, models

    noisy = bool(cfg.add_noise)
    extra = {}
    if kind != "shards":
        from ..images import DECODE
        from .files import GROUP_BYTES, GROUP_FILES, GROUP_MAX

        extra = {"input_kind": kind, "decode": DECODE, "groups": [GROUP_FILES, GROUP_BYTES, GROUP_MAX]}
    if is_auto(cfg.model):
        by = model_cfg["by_channels"]
        model = {"model": "auto", **{f"channels_{c}": {k: m.get(k) for k in ("model", "model_kwargs", "channels")}
                                     for c, m in sorted(by.items())}}
        weights = {str(c): checkpoint.weights_digest(d) for c, d in sorted(models(cfg.model).items())}
    else:
        model = {k: model_cfg.get(k) for k in ("model", "model_kwargs", "channels")}
        weights = checkpoint.weights_digest(cfg.model)
    return {
        "input": storage.redact(storage.absolute(cfg.input)), "split": cfg.split,
        "model": model, "model_weights": weights, **extra,
        "add_noise": str(cfg.noise_spec) if noisy else "",
        "seed": cfg.seed if noisy else None, "sigma": cfg.sigma,
        **spec.fingerprint_fields(),
        "convert_channels": cfg.convert_channels, "max_pixels": cfg.max_pixels, "layout": LAYOUT,
    }


def fingerprint(s: dict) -> str:
    return hashlib.blake2b(json.dumps(s, sort_keys=True).encode(), digest_size=12).hexdigest()


def read(out: str) -> dict | None:
    p = path(out)
    return storage.read_json(p) if storage.exists(p) else None


def new(out: str, s: dict) -> dict:
    """Write a manifest with a new generation (the first one of OUT, or --overwrite's)."""
    m = {"layout": LAYOUT, "generation": uuid.uuid4().hex[:16], "fingerprint": fingerprint(s), "settings": s,
         "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    storage.write_json(path(out), m)
    return m


def _flat(d: dict) -> dict:
    """The model's own fields by dotted name (``model.channels``), so a difference names the one that differs."""
    out = {}
    for k, v in d.items():
        if k == "model" and isinstance(v, dict):
            out.update({f"model.{m}": x for m, x in v.items()})
        else:
            out[k] = v
    return out


def differences(old: dict, new_settings: dict) -> str:
    """'field: old -> new' for every setting that differs, by the one rule of :mod:`dae.same_run`."""
    return describe(same_run.differences(_flat(old.get("settings", {})), _flat(new_settings)))


def check(out: str, m: dict | None, s: dict) -> None:
    """Refuse to add this run's outputs to an output made with other settings."""
    if m is None:
        return
    diff = differences(m, s)
    if diff:
        raise ValueError(f"{storage.redact(out)} holds the outputs of a different run ({diff}); "
                         f"use a new --output, or pass --overwrite to replace them")


def legacy_refusal(out: str) -> ValueError:
    return ValueError(f"{storage.redact(out)} holds markers but no {NAME}: it was written by an earlier dae "
                      f"(output layout 3) whose settings cannot be checked; use a new --output, or pass "
                      f"--overwrite to redo it")
