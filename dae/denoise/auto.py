"""``--model pretrained:auto``: the shipped gray or color model per image, by the image's channels.

    models(cfg.model)   -> {channels: model dir or name}: {1: "pretrained:gray-blind",
                           3: "pretrained:color-blind"} for auto, {C: MODEL} for any other model
    prepare_rows(...)    the prepare stage for rows of several channel counts (auto) or with rows that
                         already failed (image files that could not be read): each channel group
                         through :func:`dae.inference.prepare_batch`, failed rows passed through
    AutoDenoiser         the actor: one :class:`dae.inference.Denoiser` per model, rows routed by channels

Rules: a batch function keeps every row, in order (errors carry their reason, as everywhere in
:mod:`dae.inference`); the pixels of an image are the same as with the fitting model given by name
(the same prepare and forward code, one model per image).
"""

from __future__ import annotations

import numpy as np

from .. import checkpoint, inference
from ..shards import stack_or_ragged

AUTO = "pretrained:auto"
AUTO_NAMES = inference.PRETRAINED_BY_CHANNELS  # channels -> the shipped model for them


def is_auto(model: str) -> bool:
    return str(model) == AUTO


def models(model: str) -> dict[int, str]:
    """{channels: model} of ``--model``: the shipped models by channels for ``pretrained:auto``."""
    if not is_auto(model):
        return {int(checkpoint.load_config(model)["channels"]): model}
    shipped = checkpoint.list_pretrained()
    missing = [n for n in AUTO_NAMES.values() if n not in shipped]
    if missing:
        raise ValueError(f"--model {AUTO} needs the shipped models {', '.join(AUTO_NAMES.values())}; missing: "
                         f"{', '.join(missing)} (shipped: {', '.join(shipped) or 'none'})")
    return {c: f"{checkpoint.PRETRAINED}{n}" for c, n in AUTO_NAMES.items()}


def model_config(model: str) -> dict:
    """The model config the run records: the model's own, or for auto one per channel count."""
    if not is_auto(model):
        return checkpoint.load_config(model)
    by = {str(c): checkpoint.load_config(m) for c, m in models(model).items()}
    return {"model": "auto", "channels": 0, "by_channels": by}


# ---------------------------------------------------------------- batches by channel count


def merge_rows(n: int, parts: list[tuple[np.ndarray, dict]]) -> dict:
    """Batches of the rows ``idx`` of one batch of ``n`` rows -> one batch in the original order.
    Image columns (stacked or ragged) are re-stacked, others concatenated."""
    parts = [(np.asarray(i, np.int64), b) for i, b in parts if len(i)]
    if len(parts) == 1 and len(parts[0][0]) == n and np.array_equal(parts[0][0], np.arange(n)):
        return parts[0][1]
    order = np.concatenate([i for i, _ in parts])
    inv = np.empty(n, np.int64)
    inv[order] = np.arange(n)
    out = {}
    for k in parts[0][1]:
        cols = [b[k] for _, b in parts]
        if any(c.ndim > 1 or (c.dtype == object and len(c) and isinstance(c[0], np.ndarray)) for c in cols):
            rows = [x for c in cols for x in c]
            out[k] = stack_or_ragged([rows[j] for j in inv])
        else:
            kinds = {c.dtype.kind for c in cols}
            cat = np.concatenate([c.astype(object) for c in cols]) if len(kinds) > 1 and "O" in kinds \
                else np.concatenate(cols)
            out[k] = cat[inv]
    return out


def _failed(batch: dict, idx: np.ndarray, reasons: list[str], stages: list[str], channels: int,
            with_clean: bool) -> dict:
    """Rows that failed before prepare: what prepare_batch's rows hold, with a placeholder image."""
    out = {k: np.asarray(v)[idx] for k, v in batch.items() if k not in ("read_error", "read_stage")}
    hole = np.zeros((1, 1, channels), np.float32)
    out[inference.INPUT] = stack_or_ragged([hole] * len(idx))
    if with_clean:
        out[inference.CLEAN] = stack_or_ragged([hole] * len(idx))
    out[inference.DEPTH] = np.full(len(idx), 8, np.int8)
    out[inference.SIGMA] = np.full(len(idx), np.nan, np.float32)
    out[inference.ERROR] = np.array(reasons, dtype=object)
    out[inference.ERROR_STAGE] = np.array(stages, dtype=object)
    return out


def prepare_rows(batch: dict, model_channels: int, **kw) -> dict:
    """:func:`dae.inference.prepare_batch` over rows of any channels: ``model_channels`` 0 (auto)
    prepares each channel group (1, 3) for its own model, other counts fail with the fix; rows with
    a ``read_error`` (files that could not be read) keep it and skip prepare."""
    n = len(batch["id"])
    read_err = np.asarray(batch.get("read_error", np.full(n, "", object))).astype(str)
    read_stage = np.asarray(batch.get("read_stage", np.full(n, "", object))).astype(str)
    chans = np.asarray(batch["channels"]).astype(np.int64)
    ok = read_err == ""
    wanted = sorted({int(c) for c in chans[ok]} & set(AUTO_NAMES)) if model_channels == 0 else [model_channels]
    groups = []
    clean = bool(kw.get("noise"))
    rest = {k: v for k, v in batch.items() if k not in ("read_error", "read_stage")}
    for c in wanted:
        idx = np.flatnonzero(ok & ((chans == c) if model_channels == 0 else True))
        if len(idx):
            sub = {k: np.asarray(v)[idx] for k, v in rest.items()}
            groups.append((idx, inference.prepare_batch(sub, model_channels=c, **kw)))
    bad = np.flatnonzero(~ok | ((~np.isin(chans, wanted)) if model_channels == 0 else False))
    if len(bad):
        reasons = [read_err[i] or f"image has {chans[i]} channel(s), no shipped model has; use a model trained on "
                   f"{chans[i]}-channel images" for i in bad]
        stages = [read_stage[i] or "channels" for i in bad]
        groups.append((bad, _failed(batch, bad, reasons, stages, model_channels or 1, clean)))
    return merge_rows(n, groups)


class AutoDenoiser:
    """Ray Data actor for ``pretrained:auto``: a :class:`dae.inference.Denoiser` per channel count,
    each batch split by its rows' channels (failed rows go with the gray ones, untouched)."""

    def __init__(self, model_dirs: dict, spec=None, keep_input: bool = False):
        self.by = {int(c): inference.Denoiser(d, spec=spec, keep_input=keep_input) for c, d in model_dirs.items()}

    def __call__(self, batch: dict) -> dict:
        n = len(batch[inference.ERROR])
        chans = np.array([np.shape(x)[-1] for x in batch[inference.INPUT]], np.int64)
        failed = np.asarray(batch[inference.ERROR]).astype(str) != ""
        first = min(self.by)
        parts = []
        for c, den in self.by.items():
            idx = np.flatnonzero(((chans == c) & ~failed) | (failed if c == first else False))
            if len(idx):
                parts.append((idx, den({k: _take(v, idx) for k, v in batch.items()})))
        return merge_rows(n, parts)


def _take(col, idx: np.ndarray):
    col = np.asarray(col) if not isinstance(col, np.ndarray) else col
    if col.dtype == object and len(col) and isinstance(col[0], np.ndarray):
        return stack_or_ragged([col[i] for i in idx])
    return col[idx]
