"""The denoise stage's config: every field is a ``jobs.denoise`` flag (defaults <- preset <- flags).

Rules: the forward settings (tile, tile_overlap, forward_batch, forward_pixels, deterministic, precision,
ensemble, device, torch_threads) are flags here but are owned by :mod:`dae.inference_spec`: their
defaults and help come from :func:`~dae.inference_spec.flag`, their checks from
:meth:`~dae.inference_spec.InferenceSpec.check`, and the stage uses them only as
:meth:`DenoiseConfig.inference_spec`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from .. import shards
from ..images import EXPORT_FORMATS
from ..inference_spec import InferenceSpec, flag
from ..noise import NoiseSpec
from ..precision import PRECISIONS

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DenoiseConfig:
    input: str = field(default="", metadata={"help": "shard directory, single .parquet file, or URI; or a folder, "
                                                     "glob ('photos/**/*.jpg') or s3:// prefix of image files "
                                                     "(PNG, JPEG, TIFF, BMP, WebP; ids: paths under it)"})
    model: str = field(default="", metadata={"help": "model directory (dae.checkpoint.save_model), "
                                                     "pretrained:NAME (shipped: see models/), or pretrained:auto "
                                                     "(gray-blind or color-blind by each image's channels)"})
    output: str = field(default="", metadata={"help": "output directory or URI"})
    split: str = field(default="", metadata={"help": "only INPUT/SPLIT/*.parquet; empty: every shard under INPUT"})
    add_noise: str = field(default="", metadata={"help": "synthesize noise first (evaluation on clean data), "
                                                         "e.g. gaussian:0.5; adds noisy PNG + metrics"})
    seed: int = field(default=0, metadata={"help": "noise seed (noise depends on seed and id only)"})
    sigma: float = field(default=-1.0, metadata={"help": "noise sigma of the inputs (0-255 scale) told to a "
                                                       "noise-level-conditioned model (cunet); -1: each image's "
                                                       "own (--add-noise) or estimated from the image"})
    batch_size: int = field(default=0, metadata={"help": "rows per Ray Data batch, every stage; also the most "
                                                         "rows in one output part file; 0: from the largest "
                                                         "image, up to 1024 (about 64 MiB of float images)"})
    min_actors: int = field(default=0, metadata={"help": "model actor pool lower bound; 0: the upper bound "
                                                         "(a fixed pool); set 1 on autoscaling clusters"})
    max_actors: int = field(default=0, metadata={"help": "model actor pool upper bound; 0: as many as the "
                                                         "cluster fits while leaving CPU for the other stages"})
    gpus_per_actor: float = field(default=1.0, metadata={"help": "GPUs per model actor (when using GPUs)"})
    cpus_per_actor: float = field(default=0.0, metadata={"help": "CPUs per model actor; 0: 1 (on CPU-only "
                                                                 "clusters the pool gets half the CPUs)"})
    torch_threads: int = field(default=0, metadata={"help": "torch threads per actor; 0: 2 per CPU of a CPU "
                                                            "actor, 1 with GPUs"})
    device: str = field(default="auto", metadata={"help": "auto: cuda when the cluster has GPUs", "choices": DEVICES})
    precision: str = flag("precision", choices=PRECISIONS)
    tile: int = flag("tile")
    tile_overlap: int = flag("tile_overlap")
    ensemble: int = flag("ensemble")
    forward_batch: int = flag("forward_batch")
    forward_pixels: int = flag("forward_pixels")
    deterministic: bool = flag("deterministic")
    convert_channels: bool = field(default=False, metadata={"help": "convert images to the model's channels "
                                                                    "(RGB->gray: BT.601 luma; gray->RGB: copy)"})
    allow_duplicate_ids: bool = field(default=False, metadata={
        "help": "denoise inputs whose ids are not unique instead of failing; the output then holds one row "
                "per input ROW: an id found twice comes out twice (once per occurrence, each in the output "
                "of the input file it came from)"})
    export_png: str = field(default="", metadata={"help": "also write each denoised image as DIR/<safe id>.png"})
    export: str = field(default="", metadata={"help": "image-file inputs: also write each denoised image at its "
                                                      "input's path under DIR (see --export-format); a file there "
                                                      "that this output did not write is left alone unless "
                                                      "--overwrite"})
    export_format: str = field(default="png", metadata={
        "help": "--export: png (the input's path with .png; 16-bit stays 16-bit) or same (the input's own "
                "name and format; JPEG/WebP at --export-quality)", "choices": EXPORT_FORMATS})
    export_quality: int = field(default=95, metadata={"help": "--export-format same: JPEG/WebP quality, 1-100"})
    max_error_fraction: float = field(default=0.1, metadata={"help": "fail the job when more than this fraction "
                                                                     "of rows failed"})
    max_pixels: int = field(default=shards.DEFAULT_MAX_PIXELS, metadata={"help": "refuse images above this "
                                                                                 "many pixels (bombs)"})
    overwrite: bool = field(default=False, metadata={"help": "discard existing outputs instead of resuming "
                                                             "(needed to change settings of an existing output)"})
    keep_removed: bool = field(default=False, metadata={
        "help": "keep the outputs of input files that are gone since they were denoised; by default the "
                "output mirrors the input and such outputs are retired (removed)"})
    samples: int = field(default=8, metadata={"help": "images in samples.png"})
    progress_every: float = field(default=10.0, metadata={"help": "seconds between progress lines"})

    def inference_spec(self) -> InferenceSpec:
        """How the model actors run the model (device and threads still to be placed by the pool's plan)."""
        return InferenceSpec.from_config(self)

    @functools.cached_property
    def noise_spec(self) -> NoiseSpec | None:
        """--add-noise, parsed: once per config (the stage uses this, never the string); None without it."""
        return NoiseSpec.parse(self.add_noise) if self.add_noise else None


def validate(cfg: DenoiseConfig) -> None:
    for name in ("input", "model", "output"):
        if not getattr(cfg, name):
            raise ValueError(f"--{name} is required")
    _ = cfg.noise_spec  # parsed here, once: a bad --add-noise fails listing the valid kinds
    if cfg.sigma != -1.0 and not 0.0 <= cfg.sigma <= 255.0:
        raise ValueError(f"--sigma is on the 0-255 scale (or -1: estimated), got {cfg.sigma:g}")
    cfg.inference_spec().check()
    for name in ("batch_size", "min_actors", "max_actors"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.max_error_fraction <= 1.0:
        raise ValueError(f"--max-error-fraction must be in [0, 1], got {cfg.max_error_fraction}")
    if cfg.export_format not in EXPORT_FORMATS:
        raise ValueError(f"--export-format must be one of {', '.join(EXPORT_FORMATS)}, got {cfg.export_format!r}")
    if not 1 <= cfg.export_quality <= 100:
        raise ValueError(f"--export-quality must be in 1..100, got {cfg.export_quality}")
    if cfg.cpus_per_actor < 0:
        raise ValueError(f"--cpus-per-actor must be >= 0 (0: automatic), got {cfg.cpus_per_actor}")
