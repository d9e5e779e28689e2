"""The one way to run a model on images: tiles, fixed-size forward passes, self-ensemble, precision.

    denoise_images(model, images, spec)   # float32 (H, W, C) images of any sizes -> the denoised ones

Serves the denoise actors, evaluate, training's validation and samples, and the pictures; how it
runs is an :class:`dae.inference_spec.InferenceSpec`.

Numerics that do not depend on batching. CPU convolutions (oneDNN) pick their algorithm from the
batch size, so the same image can differ in the last float bit between a batch of 7 and one of 64,
enough to flip a rounded pixel now and then. The model therefore only ever sees forward batches of
one fixed size per input shape (``chunk_size``); partial chunks are zero-padded up to it
(``deterministic``). With a fixed batch size, an image's output does not depend on its position or
its companions (checked bitwise on CPU), so results are the same whatever the actor count, Ray
batch size or block layout.

Precision (:mod:`dae.precision`): the spec's ``precision`` (resolved here when still "auto") runs
the model under bf16 autocast or in fp32, with channels_last weights and batches; the output is
float32 from there on (blending, clamps, metrics). Determinism holds per precision: bf16 convolutions
also pick their kernels from the batch shape, which the fixed chunks keep constant.

Big images are cut into overlapping ``tile`` x ``tile`` pieces, denoised, and blended back with
weights that ramp linearly over the overlap, so memory is bounded by the tile, not the photo.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

from . import precision
from .inference_spec import ENSEMBLES, FORWARD_PIXELS, InferenceSpec
from .noise import estimate_sigma

__all__ = ["DIHEDRAL", "ENSEMBLES", "FORWARD_PIXELS", "InferenceSpec", "check_ensemble", "chunk_size",
           "denoise_images", "dihedral", "image_sigmas", "is_conditioned", "pick_device", "ramp", "tile_starts"]


# ---------------------------------------------------------------- tiles and forward passes


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering [0, length) with at least ``overlap`` shared
    pixels between neighbours; the last tile is flush with the end."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def ramp(n: int, overlap: int) -> np.ndarray:
    """1-D blend weights: linear from 1/(overlap+1) up to 1 over ``overlap`` pixels at both ends.
    Never 0, so a pixel covered by a single tile (image borders) keeps that tile's value exactly."""
    i = np.arange(n, dtype=np.float32)
    return np.minimum(1.0, np.minimum(i + 1, n - i) / np.float32(overlap + 1)).astype(np.float32)


def chunk_size(h: int, w: int, forward_batch: int, forward_pixels: int) -> int:
    """Images per forward pass for pieces of h x w: ``forward_batch``, fewer for big pieces so one
    pass holds at most ~``forward_pixels`` pixels. A function of the shape only (determinism)."""
    return max(1, min(forward_batch, forward_pixels // max(1, h * w)))


# ---------------------------------------------------------------- self-ensemble

# An ensemble of N averages the model's outputs over the first N of these flips/rotations (the
# dihedral group of the square, as (quarter turns, mirrored)), each undone before averaging.
# Ordered so that 2 and 4 are already balanced (a mirror, then a half turn).
DIHEDRAL = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))


def dihedral(x: np.ndarray, k: int, inverse: bool = False) -> np.ndarray:
    """(H, W, C) image under the k-th of :data:`DIHEDRAL` (or its inverse)."""
    turns, mirror = DIHEDRAL[k]
    if inverse:
        return np.rot90(x, -turns, axes=(0, 1))[:, ::-1] if mirror else np.rot90(x, -turns, axes=(0, 1))
    return np.rot90(x[:, ::-1] if mirror else x, turns, axes=(0, 1))


def check_ensemble(n: int) -> int:
    if n not in ENSEMBLES:
        raise ValueError(f"self-ensemble size must be one of {', '.join(map(str, ENSEMBLES))}, got {n}")
    return n


# ---------------------------------------------------------------- the forward passes


def _device(spec: InferenceSpec, model: torch.nn.Module) -> torch.device:
    if spec.device != "auto":
        return torch.device(spec.device)
    p = next(model.parameters(), None)  # unplaced: where the weights are
    return p.device if p is not None else torch.device("cpu")


def denoise_images(model: torch.nn.Module, images: Sequence[np.ndarray],
                   spec: InferenceSpec | None = None, sigmas: Sequence[float] | None = None) -> list[np.ndarray]:
    """Denoise float32 (H, W, C) images of any sizes; returns float32 (H, W, C) arrays.

    Every image becomes pieces: itself when it fits in ``tile`` x ``tile``, else overlapping tiles.
    Pieces are pooled by shape across the images (the tiles of several photos share one pass) and
    run ``chunk_size`` at a time, zero-padded up to it when ``deterministic``.

    ``sigmas``: each image's noise sigma (0-1 scale) for a noise-level-conditioned model; a missing
    or NaN level is estimated from the whole image (:func:`image_sigmas`), so all its tiles get one
    level. Other models ignore it.

    ``spec.ensemble``: 1, or the self-ensemble of 2, 4 or 8 flips/rotations (:data:`DIHEDRAL`): N
    passes, their outputs turned back and averaged; about +0.1-0.2 dB for N x the time (the "x8" of
    the literature's tables).
    """
    spec = spec or InferenceSpec()
    tile, overlap = spec.tile, spec.tile_overlap
    if overlap < 0 or overlap >= tile:
        raise ValueError(f"tile overlap must be in [0, tile={tile}), got {overlap}")
    levels = image_sigmas(images, sigmas) if is_conditioned(model) else [0.0] * len(images)
    if check_ensemble(spec.ensemble) > 1:
        one = dataclasses.replace(spec, ensemble=1)
        total = [np.zeros(img.shape, np.float32) for img in images]
        for k in range(spec.ensemble):
            views = [np.ascontiguousarray(dihedral(img, k)) for img in images]
            for acc, out in zip(total, denoise_images(model, views, one, sigmas=levels)):
                acc += dihedral(out, k, inverse=True)
        return [acc / spec.ensemble for acc in total]
    device = _device(spec, model)
    arith = precision.resolve(spec.precision, device)
    precision.prepare_model(model)  # channels_last weights (a no-op once they are)
    results: list[np.ndarray | None] = [None] * len(images)
    acc: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # tiled image -> (weighted sum, weight sum)
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)  # (h, w) -> [(image, y, x)]
    for idx, img in enumerate(images):
        h, w = img.shape[:2]
        if h <= tile and w <= tile:
            groups[(h, w)].append((idx, -1, -1))
            continue
        th, tw = min(tile, h), min(tile, w)
        acc[idx] = (np.zeros(img.shape, np.float32), np.zeros((h, w, 1), np.float32))
        for y in tile_starts(h, th, overlap):
            for x in tile_starts(w, tw, overlap):
                groups[(th, tw)].append((idx, y, x))
    weights = {}
    for (h, w), pieces in sorted(groups.items()):
        n = chunk_size(h, w, spec.forward_batch, spec.forward_pixels)
        c = images[pieces[0][0]].shape[2]
        for start in range(0, len(pieces), n):
            chunk = pieces[start:start + n]
            # (N, H, W, C) numpy -> (N, C, H, W) tensor; padded rows stay zero.
            x = np.zeros((n if spec.deterministic else len(chunk), h, w, c), np.float32)
            level = np.zeros(len(x), np.float32)
            for j, (idx, y0, x0) in enumerate(chunk):
                x[j] = images[idx] if y0 < 0 else images[idx][y0:y0 + h, x0:x0 + w]
                level[j] = levels[idx]
            # (N, H, W, C) memory is already channels_last for (N, C, H, W): no copy on CPU
            t = precision.to_channels_last(torch.from_numpy(x).permute(0, 3, 1, 2).to(device))
            with torch.inference_mode(), precision.autocast(arith, device):
                out = model(t, torch.from_numpy(level).to(device))
            out = out.float().permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, C)
            for j, (idx, y0, x0) in enumerate(chunk):
                if y0 < 0:
                    results[idx] = np.ascontiguousarray(out[j])
                    continue
                if (h, w) not in weights:
                    weights[(h, w)] = np.outer(ramp(h, overlap), ramp(w, overlap))[:, :, None]
                wsum_img, wsum = acc[idx]
                wgt = weights[(h, w)]
                wsum_img[y0:y0 + h, x0:x0 + w] += out[j] * wgt
                wsum[y0:y0 + h, x0:x0 + w] += wgt
    for idx, (num, den) in acc.items():
        results[idx] = num / den
    return results  # type: ignore[return-value]


def is_conditioned(model: torch.nn.Module) -> bool:
    """Whether a model (maybe DDP- or compile-wrapped) takes the noise level as an input."""
    while not hasattr(model, "conditioned") and (hasattr(model, "module") or hasattr(model, "_orig_mod")):
        model = getattr(model, "module", None) or model._orig_mod
    return bool(getattr(model, "conditioned", False))


def image_sigmas(images: Sequence[np.ndarray], sigmas: Sequence[float] | None = None) -> list[float]:
    """Each image's noise sigma (0-1 scale): the given one, or estimated from the image
    (:func:`dae.noise.estimate_sigma`) where none is given (None, NaN)."""
    given = list(sigmas) if sigmas is not None else [None] * len(images)
    if len(given) != len(images):
        raise ValueError(f"{len(given)} noise sigmas for {len(images)} images")
    return [float(s) if s is not None and np.isfinite(s) else estimate_sigma(img) for img, s in zip(images, given)]


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but this worker has no CUDA GPU (use --device cpu or auto)")
    return device
