"""The inference stage of ``jobs.denoise``: pure batch functions, the model actor, tiling.

Pipeline (one streaming Ray Data pipeline over all pending input files)::

    read_parquet (input file path on every row)
      -> prepare_batch   PNG header check, decode, channel check/convert, noise  CPU tasks
      -> Denoiser        model loaded once per actor, fixed-size forward passes  actor pool (GPU or CPU)
      -> finish_batch    PNG encode, per-image PSNR/SSIM                         CPU tasks
      -> driver          rows grouped by input file, one output file per input

Every batch function maps ``dict[str, np.ndarray] -> dict[str, np.ndarray]``. A row that fails at
any stage is never dropped: it keeps flowing with its reason in ``error`` (``""`` when fine) and the
stage in ``error_stage``, and the driver writes it to the errors dataset.

Numerics that do not depend on batching. CPU convolutions (oneDNN) pick their algorithm from the
batch size, so the same image can differ in the last float bit between a batch of 7 and one of 64,
enough to flip a rounded pixel now and then. The model therefore only ever sees forward batches of
one fixed size per input shape (``chunk_size``); partial chunks are zero-padded up to it
(``deterministic=True``). With a fixed batch size, an image's output does not depend on its position or
its companions (checked bitwise on CPU), so results are the same whatever the actor count, Ray
batch size or block layout.

Big images are cut into overlapping ``tile`` x ``tile`` pieces, denoised, and blended back with
weights that ramp linearly over the overlap, so memory is bounded by the tile, not the photo.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch

from . import metrics as M
from .noise import NoiseSpec, estimate_sigma, image_rng, noise_sigmas
from .shards import (DEFAULT_MAX_PIXELS, ImageDecodeError, decode_png, encode_png, from_float, png_header,
                     stack_or_ragged, to_float)

ERROR = "error"
ERROR_STAGE = "error_stage"
PATH = "path"  # the input file of the row (Ray's include_paths column)
INPUT = "input"  # the model's input image, float32 (H, W, C) in [0, 1]
CLEAN = "clean"
DENOISED = "denoised"
DEPTH = "depth"  # 8 or 16: bit depth the denoised PNG is written with
SIGMA = "sigma"  # float32 noise sigma (0-1 scale) told to a conditioned model; NaN: estimate it (or none used)
METRIC_COLUMNS = ("psnr_noisy", "psnr_denoised", "ssim_denoised")
# ITU-R BT.601 luma, the weights Pillow's convert("L") uses: RGB -> gray for --convert-channels.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ---------------------------------------------------------------- small helpers


def _column(values: Sequence, dtype=object) -> np.ndarray:
    out = np.empty(len(values), dtype=dtype)
    out[:] = list(values)
    return out


def _placeholder(like: Sequence[np.ndarray], channels: int) -> np.ndarray:
    # A failed row still needs an image cell; take the batch's common shape so the column stays
    # a fixed-shape tensor (cheaper than a ragged one) when every good image has the same size.
    shapes = {a.shape for a in like}
    shape = next(iter(shapes)) if len(shapes) == 1 else (1, 1, channels)
    return np.zeros(shape, np.float32)


def convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """float (H, W, C) -> (H, W, channels): gray -> RGB by replication, RGB -> gray by BT.601 luma."""
    c = x.shape[2]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return np.repeat(x, 3, axis=2)
    if c == 3 and channels == 1:
        return (x @ LUMA)[:, :, None].astype(np.float32)
    raise ValueError(f"cannot convert {c} channels to {channels}")


def channel_mismatch_message(image_channels: int, model_channels: int) -> str:
    return (f"image has {image_channels} channel(s) but the model was trained on {model_channels}; "
            f"pass --convert-channels to convert (RGB->gray by BT.601 luma, gray->RGB by replication) "
            f"or use a model trained on {image_channels}-channel images")


SHAPE_COLUMNS = ("height", "width", "channels")


def header_mismatch_message(header: tuple[int, int, int], columns: tuple[int, int, int]) -> str:
    return (f"PNG header says {'x'.join(map(str, header))}, the row's columns say {'x'.join(map(str, columns))} "
            f"(height x width x channels); the image was not decoded")


def check_header(data: bytes, columns: tuple[int, int, int], max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, str]:
    """("", "") when the PNG's header (:func:`dae.shards.png_header`, 33 bytes, nothing decoded) gives
    the shape the row's ``height``/``width``/``channels`` columns claim, else (reason, stage): stage
    ``decode`` for bytes that are no PNG and for an image over ``max_pixels`` (a decompression bomb,
    whatever its columns say), ``header`` for a PNG of another shape than its columns. The columns
    size the run's batches (the scan reads them, not the images), so a row that lies about them is
    refused before its pixels can take more memory than planned."""
    try:
        h, w, c, _ = png_header(data)
    except ImageDecodeError as e:
        return str(e), "decode"
    if w * h > max_pixels:  # decode_png's words for it
        return f"image of {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (decompression bomb?)", "decode"
    if (h, w, c) != columns:
        return header_mismatch_message((h, w, c), columns), "header"
    return "", ""


def quantize(x: np.ndarray, depth: int) -> np.ndarray:
    """Round a float image to what its PNG will hold (8 or 16 bit), back as float32."""
    return to_float(from_float(x, np.uint16 if depth == 16 else np.uint8))


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def export_name(image_id: str, suffix: str = ".png") -> str:
    """A file name from an untrusted id that can never leave its folder: runs of characters other than
    letters, digits, ``._-`` become ``_``, leading/trailing dots go (no ``..``), the stem is capped at
    80 characters, and a hash of the full id keeps distinct ids (``a/b`` vs ``a_b``) apart."""
    raw = str(image_id)
    stem = _UNSAFE.sub("_", raw).strip("._")[:80] or "image"
    digest = hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    return f"{stem}-{digest}{suffix}"


# ---------------------------------------------------------------- stage 1: prepare (CPU)


def prepare_batch(batch: dict, model_channels: int, noise: str | None = None, seed: int = 0,
                  convert: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, sigma: float | None = None) -> dict:
    """Shard rows -> rows with ``input`` (float32 (H, W, C), what the model sees), ``depth``, ``sigma``
    (``sigma`` if given, else the level ``noise`` drew for the image, else NaN: estimated later) and,
    with ``noise``, ``clean`` (the reference for metrics). Bad rows get ``error``/``error_stage``.

    When the batch has the ``height``/``width``/``channels`` columns (shard rows always do), each PNG's
    header is checked against them before decoding (:func:`check_header`): a row whose image is not
    the shape its columns say becomes an error row (stage ``header``) and is never decoded, and so does
    one over ``max_pixels`` (stage ``decode``, a decompression bomb, whatever its columns say).
    ``decode_png`` checks ``max_pixels`` from the header too (batches without those columns).

    With noise, the noisy image is rounded to its PNG bit depth before the model sees it, so the
    ``noisy`` PNG written later is exactly the model's input and metrics recompute from the files;
    except unclipped noise (``awgn``, the literature's protocol): the model sees it neither clipped nor
    rounded, and the ``noisy`` PNG is only its clipped, rounded picture.
    """
    spec = NoiseSpec.parse(noise) if noise else None
    ids = batch["id"]
    n = len(ids)
    errors, stages = [""] * n, [""] * n
    depth = np.full(n, 8, np.int8)
    inputs: list[np.ndarray | None] = [None] * n
    cleans: list[np.ndarray | None] = [None] * n
    shapes = [batch[k] for k in SHAPE_COLUMNS] if all(k in batch for k in SHAPE_COLUMNS) else None
    for i in range(n):
        if shapes is not None:
            try:
                columns = tuple(int(col[i]) for col in shapes)
            except (TypeError, ValueError, OverflowError) as e:
                errors[i], stages[i] = f"unreadable height/width/channels columns: {type(e).__name__}: {e}", "header"
                continue
            errors[i], stages[i] = check_header(batch["image"][i], columns, max_pixels)
            if errors[i]:
                continue
        try:
            a = decode_png(batch["image"][i], max_pixels)
        except ImageDecodeError as e:
            errors[i], stages[i] = str(e), "decode"
            continue
        # 16-bit survives only for gray output; Pillow writes no 16-bit RGB PNG.
        depth[i] = 16 if a.dtype == np.uint16 and model_channels == 1 else 8
        x = to_float(a)
        if x.shape[2] != model_channels:
            if not convert:
                errors[i], stages[i] = channel_mismatch_message(x.shape[2], model_channels), "channels"
                continue
            x = quantize(convert_channels(x, model_channels), int(depth[i]))
        if spec is not None:
            cleans[i] = x
            x = spec.apply(x, image_rng(seed, str(ids[i])))
            if spec.clipped:
                x = quantize(x, int(depth[i]))
        inputs[i] = x
    good = [x for x in inputs if x is not None]
    hole = _placeholder(good, model_channels)
    out = {k: v for k, v in batch.items() if k != INPUT}
    out[INPUT] = stack_or_ragged([hole if x is None else x for x in inputs])
    if spec is not None:
        out[CLEAN] = stack_or_ragged([hole if x is None else x for x in cleans])
    out[DEPTH] = depth
    if sigma is not None:
        out[SIGMA] = np.full(n, sigma, np.float32)
    elif spec is not None:
        out[SIGMA] = noise_sigmas([str(i) for i in ids], spec, seed)
    else:
        out[SIGMA] = np.full(n, np.nan, np.float32)
    out[ERROR] = _column(errors)
    out[ERROR_STAGE] = _column(stages)
    return out


# ---------------------------------------------------------------- stage 2: the model (actor)


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


# Default cap on pixels per forward pass: 64 images of 28x28 go together, a photo goes alone. On CPU
# a 481x321 photo through a 16-wide U-Net takes 0.20 s alone and 0.31-0.36 s each in passes of 4-8
# (measured, 1 thread), and a chunk of 1 never pads: mixed sizes in a batch cost nothing extra.
FORWARD_PIXELS = 256 * 256


def chunk_size(h: int, w: int, forward_batch: int, forward_pixels: int) -> int:
    """Images per forward pass for pieces of h x w: ``forward_batch``, fewer for big pieces so one
    pass holds at most ~``forward_pixels`` pixels. A function of the shape only (determinism)."""
    return max(1, min(forward_batch, forward_pixels // max(1, h * w)))


# Self-ensemble sizes: an ensemble of N averages the model's outputs over the first N of these
# flips/rotations (the dihedral group of the square, as (quarter turns, mirrored)), each undone
# before averaging. Ordered so that 2 and 4 are already balanced (a mirror, then a half turn).
DIHEDRAL = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))
ENSEMBLES = (1, 2, 4, 8)


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


def denoise_images(model: torch.nn.Module, images: Sequence[np.ndarray], device: str | torch.device = "cpu",
                   tile: int = 512, overlap: int = 32, forward_batch: int = 64,
                   forward_pixels: int = FORWARD_PIXELS, deterministic: bool = True,
                   bf16: bool = True, sigmas: Sequence[float] | None = None, ensemble: int = 1) -> list[np.ndarray]:
    """Denoise float32 (H, W, C) images of any sizes; returns float32 (H, W, C) arrays.

    Every image becomes pieces: itself when it fits in ``tile`` x ``tile``, else overlapping tiles.
    Pieces are pooled by shape across the images (the tiles of several photos share one pass) and
    run ``chunk_size`` at a time, zero-padded up to it when ``deterministic``.

    ``sigmas``: each image's noise sigma (0-1 scale) for a noise-level-conditioned model; a missing
    or NaN level is estimated from the whole image (:func:`image_sigmas`), so all its tiles get one
    level. Other models ignore it.

    ``ensemble``: 1, or the self-ensemble of 2, 4 or 8 flips/rotations (:data:`DIHEDRAL`): N passes,
    their outputs turned back and averaged; about +0.1-0.2 dB for N x the time (the "x8" of the
    literature's tables).
    """
    if overlap < 0 or overlap >= tile:
        raise ValueError(f"tile overlap must be in [0, tile={tile}), got {overlap}")
    device = torch.device(device)
    levels = image_sigmas(images, sigmas) if is_conditioned(model) else [0.0] * len(images)
    if check_ensemble(ensemble) > 1:
        kw = dict(device=device, tile=tile, overlap=overlap, forward_batch=forward_batch,
                  forward_pixels=forward_pixels, deterministic=deterministic, bf16=bf16, sigmas=levels)
        total = [np.zeros(img.shape, np.float32) for img in images]
        for k in range(ensemble):
            views = [np.ascontiguousarray(dihedral(img, k)) for img in images]
            for acc, out in zip(total, denoise_images(model, views, **kw)):
                acc += dihedral(out, k, inverse=True)
        return [acc / ensemble for acc in total]
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda"
           else nullcontext())  # bf16 on GPU only: CPU bf16 is slow and changes numerics
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
        n = chunk_size(h, w, forward_batch, forward_pixels)
        c = images[pieces[0][0]].shape[2]
        for start in range(0, len(pieces), n):
            chunk = pieces[start:start + n]
            # (N, H, W, C) numpy -> (N, C, H, W) tensor; padded rows stay zero.
            x = np.zeros((n if deterministic else len(chunk), h, w, c), np.float32)
            level = np.zeros(len(x), np.float32)
            for j, (idx, y0, x0) in enumerate(chunk):
                x[j] = images[idx] if y0 < 0 else images[idx][y0:y0 + h, x0:x0 + w]
                level[j] = levels[idx]
            t = torch.from_numpy(x).permute(0, 3, 1, 2).to(device)
            with torch.inference_mode(), amp:
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


class Denoiser:
    """Ray Data actor: loads the model once, then maps batches ``input`` -> ``denoised``.

    A failing forward pass (e.g. out of memory on one odd image) is retried image by image so only the
    images that really fail become error rows.
    """

    def __init__(self, model_dir: str, device: str = "auto", tile: int = 512, overlap: int = 32,
                 forward_batch: int = 64, forward_pixels: int = FORWARD_PIXELS, deterministic: bool = True,
                 bf16: bool = True, torch_threads: int = 0, keep_input: bool = False, ensemble: int = 1):
        from .checkpoint import load_model

        if torch_threads > 0:
            # Fixed thread count: results (and speed) must not depend on how Ray sized OMP for this actor.
            torch.set_num_threads(torch_threads)
        self.device = pick_device(device)
        self.model, self.config = load_model(model_dir, self.device)
        self.channels = int(self.config["channels"])
        self.conditioned = is_conditioned(self.model)
        self.kw = dict(tile=tile, overlap=overlap, forward_batch=forward_batch, forward_pixels=forward_pixels,
                       deterministic=deterministic, bf16=bf16, ensemble=check_ensemble(ensemble))
        self.keep_input = keep_input

    def run(self, images: list[np.ndarray], sigmas: Sequence[float] | None = None,
            ensemble: int | None = None) -> list[np.ndarray]:
        """``ensemble``: this call's self-ensemble size instead of the actor's."""
        kw = self.kw if ensemble is None else {**self.kw, "ensemble": ensemble}
        return denoise_images(self.model, images, self.device, sigmas=sigmas, **kw)

    def __call__(self, batch: dict) -> dict:
        errors = list(batch[ERROR])
        stages = list(batch[ERROR_STAGE])
        inputs = list(batch[INPUT])
        sigmas = [float(s) for s in batch[SIGMA]] if SIGMA in batch else [np.nan] * len(inputs)
        good = [i for i, e in enumerate(errors) if not e]
        if self.conditioned:  # the level each image is denoised with, estimated where not given (written out)
            for i in good:
                try:
                    sigmas[i] = image_sigmas([inputs[i]], [sigmas[i]])[0]
                except Exception as e:
                    errors[i], stages[i] = f"noise level estimate: {type(e).__name__}: {e}"[:2000], "sigma"
            good = [i for i in good if not errors[i]]
        outs: dict[int, np.ndarray] = {}
        try:
            outs = dict(zip(good, self.run([inputs[i] for i in good], [sigmas[i] for i in good])))
        except Exception:
            if self.device == "cuda":
                torch.cuda.empty_cache()
            for i in good:  # one by one: fail only the culprits
                try:
                    outs[i] = self.run([inputs[i]], [sigmas[i]])[0]
                except Exception as e:
                    errors[i], stages[i] = f"{type(e).__name__}: {e}"[:2000], "infer"
        hole = _placeholder(list(outs.values()), self.channels)
        out = {k: v for k, v in batch.items() if k != INPUT or self.keep_input}
        out[DENOISED] = stack_or_ragged([outs.get(i, hole) for i in range(len(errors))])
        out[SIGMA] = np.asarray(sigmas if self.conditioned else [np.nan] * len(errors), np.float32)
        out[ERROR] = _column(errors)
        out[ERROR_STAGE] = _column(stages)
        return out


# ---------------------------------------------------------------- stage 3: encode + metrics (CPU)


def finish_batch(batch: dict, with_noise: bool = False) -> dict:
    """Denoised (and noisy) images -> PNG bytes; with noise, per-image metrics against ``clean``:
    ``psnr_noisy`` (noisy vs clean), ``psnr_denoised`` and ``ssim_denoised`` (the denoised image as
    stored, i.e. after rounding to its PNG bit depth, vs clean). Image columns are dropped."""
    errors = list(batch[ERROR])
    stages = list(batch[ERROR_STAGE])
    n = len(errors)
    den_png, noisy_png = [b""] * n, [b""] * n
    stored: dict[int, np.ndarray] = {}
    for i in range(n):
        if errors[i]:
            continue
        try:
            dtype = np.uint16 if int(batch[DEPTH][i]) == 16 else np.uint8
            q = from_float(batch[DENOISED][i], dtype)
            den_png[i] = encode_png(q)
            if with_noise:
                noisy_png[i] = encode_png(from_float(batch[INPUT][i], dtype))
                stored[i] = to_float(q)
        except Exception as e:
            errors[i], stages[i] = f"{type(e).__name__}: {e}", "encode"
    drop = {INPUT, CLEAN, DENOISED, DEPTH}
    out = {k: v for k, v in batch.items() if k not in drop}
    out[DENOISED] = _column(den_png)
    if with_noise:
        out["noisy"] = _column(noisy_png)
        vals = {k: np.full(n, np.nan) for k in METRIC_COLUMNS}
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i in stored:
            if not errors[i]:
                by_shape[stored[i].shape].append(i)
        for shape, idx in by_shape.items():
            # one (N, H, W, C) call per shape; metrics are per image either way
            clean = np.stack([batch[CLEAN][i] for i in idx])
            noisy = np.stack([batch[INPUT][i] for i in idx])
            den = np.stack([stored[i] for i in idx])
            vals["psnr_noisy"][idx] = M.psnr(noisy, clean).numpy()
            vals["psnr_denoised"][idx] = M.psnr(den, clean).numpy()
            if min(shape[:2]) >= 3:  # SSIM needs a 3x3 window; smaller images keep NaN
                vals["ssim_denoised"][idx] = M.ssim(den, clean).numpy()
        out.update(vals)
    out[ERROR] = _column(errors)
    out[ERROR_STAGE] = _column(stages)
    return out


# ---------------------------------------------------------------- sizing the actor pool


def plan_actors(cpus: float, gpus: float, device: str = "auto", min_actors: int = 0, max_actors: int = 0,
                cpus_per_actor: float = 0.0, gpus_per_actor: float = 1.0) -> dict:
    """Actor pool bounds and per-actor resources that fit the cluster. 0 means automatic for
    ``min_actors`` (= the upper bound: a fixed pool), ``max_actors`` and ``cpus_per_actor``.

    The read, prepare and finish stages are Ray tasks that need CPUs too: a pool holding every CPU
    starves them and the pipeline hangs without an error (2 one-CPU actors on 2 CPUs never finish).
    So at least one CPU (half the cluster on a 1-CPU machine) stays free for them, and requests above
    what fits are lowered, with a note saying so.

    Automatic CPU pools get half the cluster's CPUs as 1-CPU, single-thread actors; the other half
    runs the read, decode, encode and write tasks (measured fastest on 2 cores: jobs.bench_denoise).
    Half, not all but one: a pool that loses a node restarts its actors on the others, and the tasks
    must still find a free CPU there. With GPUs: one actor per GPU (``gpus_per_actor`` 1), 1 CPU each.
    """
    notes = []
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"invalid device {device!r}; valid: auto, cpu, cuda")
    if device == "cuda" and gpus <= 0:
        raise ValueError("--device cuda but the Ray cluster has no GPU; valid here: auto, cpu")
    use_gpu = device == "cuda" or (device == "auto" and gpus > 0)
    if cpus <= 0:
        raise ValueError("the Ray cluster reports no CPUs")
    reserve = 1.0 if cpus >= 2 else cpus / 2
    auto = cpus_per_actor <= 0
    actor_cpus = min(1.0, cpus - reserve) if auto else float(cpus_per_actor)
    if actor_cpus > cpus - reserve:
        if not auto:
            notes.append(f"cpus_per_actor {actor_cpus:g} lowered to {cpus - reserve:g} to leave {reserve:g} CPU "
                         f"for reads on a {cpus:g}-CPU cluster")
        actor_cpus = cpus - reserve
    budget = cpus - reserve if use_gpu or not auto else max(actor_cpus, min(cpus - reserve, cpus // 2))
    cap = max(1, int(budget / actor_cpus + 1e-9))
    actor_gpus = 0.0
    if use_gpu:
        actor_gpus = float(gpus_per_actor)
        if actor_gpus <= 0 or actor_gpus > gpus:
            raise ValueError(f"gpus_per_actor must be in (0, {gpus:g}] on this cluster, got {gpus_per_actor:g}")
        cap = min(cap, max(1, int(gpus / actor_gpus + 1e-9)))
    hi = cap if max_actors <= 0 else min(max_actors, cap)
    if max_actors > cap:
        notes.append(f"max_actors {max_actors} lowered to {cap}: more would not fit the cluster "
                     f"({cpus:g} CPU, {gpus:g} GPU) next to the read tasks")
    lo = hi if min_actors <= 0 else min(min_actors, hi)
    if min_actors > hi:
        notes.append(f"min_actors {min_actors} lowered to {hi}")
    # CPU tasks (read, decode, encode, write) take at most what a CPU actor takes: with half-CPU
    # actors, a 1-CPU task may find no node with a whole CPU free once the actors of a lost node
    # restart on the others (seen: a hang after a node kill with 1-CPU tasks and half-CPU actors).
    task_cpus = 1.0 if use_gpu else min(1.0, actor_cpus)
    return {"min_actors": lo, "max_actors": hi, "actor_cpus": actor_cpus, "actor_gpus": actor_gpus,
            "task_cpus": task_cpus, "device": "cuda" if use_gpu else "cpu", "notes": notes}
