"""The scoring pipeline's pure batch functions (Ray Data tasks), and how a method's row is scored.

    select_rows     shard rows kept (--limit, the tuning hold-out), PNG bytes not yet decoded
    noisy_batch     decode; one row per (image, noise spec): clean, noisy, the noisy input's scores
    baseline_batch  one classical method: adds METHOD__psnr/ssim/sec/hash

Rules:
- Every function maps ``dict[str, np.ndarray] -> dict[str, np.ndarray]`` and depends on its
  arguments only: no Ray, no driver state, no model.
- Every method's columns are ``METHOD__psnr``, ``__ssim``, ``__sec`` and ``__hash`` (:data:`METRICS`);
  ``__hash`` is :func:`array_hash` of the noisy input the method received, so the driver can check
  that every method saw exactly the noise stage's pixels. A row a method does not score (BM3D's
  limit) has NaN scores and hash -1.
- Noise depends on the seed and the image id only (``add_noise_batch``): every method, the
  pictures and the tuning set see the same pixels for the same image.
"""

from __future__ import annotations

import hashlib
import time
from typing import Mapping, Sequence

import numpy as np

from .. import baselines, shards
from ..noise import NoiseSpec, add_noise_batch, noise_sigmas

NOISY = "noisy"  # the method key of the unprocessed noisy input
METRICS = ("psnr", "ssim", "sec", "hash")


def array_hash(a: np.ndarray) -> int:
    """A 63-bit content hash of a float32 image (shape included): cheap proof two stages saw the
    same pixels."""
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    h = hashlib.blake2b(repr(a.shape).encode(), digest_size=8)
    h.update(a.tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


def score_images(preds: Sequence[np.ndarray], cleans: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (psnr, ssim) float64 arrays; images of equal shape are scored as one batch."""
    from ..metrics import psnr, ssim

    n = len(preds)
    p_out, s_out = np.empty(n), np.empty(n)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(preds):
        groups.setdefault(tuple(np.shape(p)), []).append(i)
    for idx in groups.values():
        p = np.stack([preds[i] for i in idx])
        c = np.stack([cleans[i] for i in idx])
        p_out[idx] = psnr(p, c).numpy()
        s_out[idx] = ssim(p, c).numpy()
    return p_out, s_out


def rows_of(col) -> list:
    """A batch column as a list of per-row arrays (works for (B, H, W, C) and ragged object arrays)."""
    return list(col)


def _as_array(images: list[np.ndarray]) -> np.ndarray:
    return shards.stack_or_ragged(images)


def select_rows(batch: dict, keep: set | None = None, drop: set | None = None) -> dict:
    """Shard rows whose id is in ``keep`` (when given) and not in ``drop``: the --limit and the
    tuning hold-out, applied to the PNG bytes before anything is decoded."""
    ids = [str(i) for i in batch["id"]]
    sel = np.array([(keep is None or x in keep) and (drop is None or x not in drop) for x in ids], dtype=bool)
    return {k: np.asarray(v)[sel] for k, v in batch.items()}


def noisy_batch(batch: dict, specs: Sequence[NoiseSpec], seed: int) -> dict:
    """Shard rows (PNG bytes) -> one row per (image, noise spec) with clean, noisy and the noisy
    input's metrics (the "noisy" method)."""
    ids = [str(i) for i in batch["id"]]
    clean = [shards.to_float(shards.decode_png(b)) for b in batch["image"]]
    out: dict[str, list] = {"id": [], "noise": [], "clean": [], "noisy": [], "sigma": []}
    for spec in specs:
        noisy = add_noise_batch(clean, ids, spec, seed)
        out["sigma"] += noise_sigmas(ids, spec, seed).tolist()  # told to conditioned models: the true level
        out["id"] += ids
        out["noise"] += [str(spec)] * len(ids)
        out["clean"] += clean
        out["noisy"] += list(noisy)
    p, s = score_images(out["noisy"], out["clean"]) if out["id"] else (np.empty(0), np.empty(0))
    hashes = np.array([array_hash(x) for x in out["noisy"]], dtype=np.int64)
    return {
        "id": np.array(out["id"], dtype=object),
        "noise": np.array(out["noise"], dtype=object),
        "sigma": np.array(out["sigma"], dtype=np.float32),
        "clean": _as_array(out["clean"]) if out["id"] else np.empty((0, 1, 1, 1), np.float32),
        "noisy": _as_array(out["noisy"]) if out["id"] else np.empty((0, 1, 1, 1), np.float32),
        f"{NOISY}__psnr": p, f"{NOISY}__ssim": s,
        f"{NOISY}__sec": np.zeros(len(out["id"])), f"{NOISY}__hash": hashes,
    }


def baseline_batch(batch: dict, method: str, params: dict, specs: Mapping[str, NoiseSpec],
                   subset: set | None = None) -> dict:
    """Adds METHOD__psnr/ssim/sec/hash for one classical method. ``params``: {noise spec: params};
    ``specs``: {noise spec: the parsed spec} (the rows' ``noise`` column holds the strings).
    Rows outside ``subset`` (when given: BM3D's limit) get NaN and hash -1 and are not scored."""
    ids, noise = batch["id"], batch["noise"]
    noisy, clean = rows_of(batch["noisy"]), rows_of(batch["clean"])
    n = len(ids)
    sec = np.full(n, np.nan)
    hashes = np.full(n, -1, dtype=np.int64)
    done, outs = [], []
    for i in range(n):
        if subset is not None and str(ids[i]) not in subset:
            continue
        hashes[i] = array_hash(noisy[i])
        t0 = time.perf_counter()
        sigma = baselines.noise_sigma(specs[str(noise[i])], noisy[i])
        outs.append(baselines.apply(method, noisy[i], sigma, params[str(noise[i])]))
        sec[i] = time.perf_counter() - t0
        done.append(i)
    p, s = np.full(n, np.nan), np.full(n, np.nan)
    if done:
        dp, ds = score_images(outs, [clean[i] for i in done])
        p[done], s[done] = dp, ds
    return {**batch, f"{method}__psnr": p, f"{method}__ssim": s, f"{method}__sec": sec,
            f"{method}__hash": hashes}
