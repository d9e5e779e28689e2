"""The Ray Data batch stages of ``jobs.denoise``: prepare, the model actor, finish.

Pipeline (one streaming Ray Data pipeline over all pending input files)::

    read_parquet (input file path on every row)
      -> prepare_batch   PNG header check, decode, channel check/convert, noise  CPU tasks
      -> Denoiser        model loaded once per actor, fixed-size forward passes  actor pool (GPU or CPU)
      -> finish_batch    PNG encode, per-image PSNR/SSIM                         CPU tasks
      -> driver          rows grouped by input file, one output file per input

Rules:
- Every batch function maps ``dict[str, np.ndarray] -> dict[str, np.ndarray]``. A row that fails at
  any stage is never dropped: it keeps flowing with its reason in ``error`` (``""`` when fine) and
  the stage in ``error_stage``, and the driver writes it to the errors dataset.
- The actor runs the model only through :func:`dae.forward.denoise_images`, with the
  :class:`dae.inference_spec.InferenceSpec` it is given: how a model runs is decided in one place.

Also here, for the code that imports them from ``dae.inference``: the forward passes
(:mod:`dae.forward`), the spec (:mod:`dae.inference_spec`) and the actor pool plan (:mod:`dae.actors`).

The CPU stages never import torch: only the actor does (and :mod:`dae.forward`'s names, looked up
here on first use). A Ray worker that runs a prepare or finish task then starts without it: some 2 s
less CPU each (many such workers start per job on a cluster) and about 0.6 GB less memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections import defaultdict
from typing import Sequence

import numpy as np

from . import metrics as M, precision
from .actors import plan_actors
from .inference_spec import ENSEMBLES, FORWARD_PIXELS, InferenceSpec
from .noise import NoiseSpec, image_rng, noise_sigmas
from .shards import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    check_pixels,
    decode_png,
    encode_png,
    from_float,
    png_header,
    stack_or_ragged,
    to_float,
)

__all__ = [  # the batch stages, and what dae.inference has always offered from the modules it uses (and
    # dae.forward's names, _FORWARD below, looked up on first use)
    "CLEAN", "DENOISED", "DEPTH", "ENSEMBLES", "ERROR", "ERROR_STAGE", "FORWARD_PIXELS", "INPUT",
    "InferenceSpec", "METRIC_COLUMNS", "PATH", "PRETRAINED_BY_CHANNELS", "SIGMA", "Denoiser", "channel_fix",
    "channel_mismatch_message", "check_header", "convert_channels", "export_name", "finish_batch", "plan_actors",
    "prepare_batch", "quantize"]

# dae.forward's names, offered here as before, imported on first use (dae.forward imports torch).
_FORWARD = ("DIHEDRAL", "check_ensemble", "chunk_size", "denoise_images", "dihedral", "image_sigmas",
            "is_conditioned", "pick_device", "ramp", "tile_starts")


def __getattr__(name: str):
    if name in _FORWARD:
        from . import forward

        return getattr(forward, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


# The shipped model for images of each channel count (``--model pretrained:auto`` picks by it).
PRETRAINED_BY_CHANNELS = {1: "gray-blind", 3: "color-blind"}


def channel_fix(image_channels: int, model_channels: int) -> str:
    """What to do about images of ``image_channels`` and a model of ``model_channels``: the model that
    fits them first (a user with RGB photos and a gray model wants the color model, not gray photos)."""
    name = PRETRAINED_BY_CHANNELS.get(int(image_channels))
    fits = (f"use --model pretrained:{name} (or pretrained:auto, which picks by each image's channels)"
            if name else f"use a model trained on {image_channels}-channel images")
    return (f"{image_channels}-channel images with a {model_channels}-channel model: {fits}, or pass "
            f"--convert-channels to convert (RGB->gray by BT.601 luma, gray->RGB by replication)")


def channel_mismatch_message(image_channels: int, model_channels: int) -> str:
    return (f"image has {image_channels} channel(s) but the model was trained on {model_channels}; "
            + channel_fix(image_channels, model_channels))


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
    try:
        check_pixels(w, h, max_pixels)  # decode_png's check, and its words
    except ImageDecodeError as e:
        return str(e), "decode"
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


def prepare_batch(batch: dict, model_channels: int, noise: NoiseSpec | str | None = None, seed: int = 0,
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
        depth[i] = 16 if a.dtype == np.uint16 else 8  # the output keeps the input's bit depth
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


class Denoiser:
    """Ray Data actor: loads the model once, then maps batches ``input`` -> ``denoised``, run as ``spec`` says
    (its device "auto": cuda when this worker has one; its torch_threads pinned when above 0).

    A failing forward pass (e.g. out of memory on one odd image) is retried image by image so only the
    images that really fail become error rows.
    """

    def __init__(self, model_dir: str, spec: InferenceSpec | None = None, keep_input: bool = False):
        import torch

        from .checkpoint import load_model
        from .forward import check_ensemble, is_conditioned, pick_device

        spec = spec or InferenceSpec()
        if spec.torch_threads > 0:
            # Fixed thread count: results (and speed) must not depend on how Ray sized OMP for this actor.
            torch.set_num_threads(spec.torch_threads)
        check_ensemble(spec.ensemble)
        self.spec = spec.placed(pick_device(spec.device))
        self.device = self.spec.device
        self.model, self.config = load_model(model_dir, self.device)
        precision.prepare_model(self.model)
        if self.spec.precision == "bf16" and not precision.native_bf16(self.device):
            # The plan's precision holds (it is in the output's fingerprint); only the speed suffers.
            logging.getLogger(__name__).warning(
                "precision bf16 on %s, which has no native bf16: emulated, slower than --precision fp32",
                self.device)
        self.channels = int(self.config["channels"])
        self.conditioned = is_conditioned(self.model)
        self.keep_input = keep_input

    def run(self, images: list[np.ndarray], sigmas: Sequence[float] | None = None,
            ensemble: int | None = None) -> list[np.ndarray]:
        """``ensemble``: this call's self-ensemble size instead of the spec's."""
        from .forward import denoise_images

        spec = self.spec if ensemble is None else dataclasses.replace(self.spec, ensemble=ensemble)
        return denoise_images(self.model, images, spec, sigmas=sigmas)

    def __call__(self, batch: dict) -> dict:
        from .forward import image_sigmas

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
                import torch

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
            vals["psnr_noisy"][idx] = M.psnr_np(noisy, clean)
            vals["psnr_denoised"][idx] = M.psnr_np(den, clean)
            if min(shape[:2]) >= 3:  # SSIM needs a 3x3 window; smaller images keep NaN
                vals["ssim_denoised"][idx] = M.ssim_np(den, clean)
        out.update(vals)
    out[ERROR] = _column(errors)
    out[ERROR_STAGE] = _column(stages)
    return out
