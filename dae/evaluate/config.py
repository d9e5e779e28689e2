"""The evaluate stage's config and the checks that fail before any work.

Rules: every field is a ``jobs.evaluate`` flag (defaults <- preset <- flags). The forward settings
are denoise's flags with denoise's defaults (:func:`dae.inference_spec.flag`) and reach the models
only as :meth:`EvaluateConfig.inference_spec`; ``--ensemble`` differs: it lists the sizes every
model is scored at. A bad value is a one-line error naming the flag, raised before Ray starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import baselines, shards, storage
from ..inference_spec import InferenceSpec, flag
from ..noise import NoiseSpec
from ..precision import PRECISIONS


@dataclass(frozen=True)
class EvaluateConfig:
    data: str = field(default="", metadata={"help": "shard root (ROOT/SPLIT/*.parquet), a split dir, "
                                                    "a .parquet file, or a URI"})
    split: str = field(default="test", metadata={"help": "split of --data to score"})
    out: str = field(default="", metadata={"help": "output directory or URI for report.md/json, comparison.png"})
    # The three lists are flags of space-separated words (nargs): `--noise gaussian:0.1 gaussian:0.5`.
    noise: tuple = field(default=("gaussian:0.1", "gaussian:0.5", "salt_pepper:0.2"),
                         metadata={"help": "noise specs, each scored separately", "nargs": "+"})
    models: tuple = field(default=(), metadata={
        "help": "model directories (config.json + model.safetensors) or pretrained:NAME; named by directory",
        "nargs": "*"})
    ensemble: tuple = field(default=(1,), metadata={
        "help": "self-ensemble sizes every model is scored at: 1 plain; 2, 4 or 8 flips/rotations averaged "
                "(N x the time), a row 'NAME xN' each", "nargs": "+", "type": int})
    baselines: tuple = field(default=baselines.DEFAULT_BASELINES,
                             metadata={"help": f"classical methods, of: {', '.join(baselines.BASELINES)} "
                                               "(bm3d only if installed)", "nargs": "*"})
    limit: int = field(default=0, metadata={"help": "score only the first N images (file order); 0 = all"})
    seed: int = field(default=0, metadata={"help": "noise seed (noise of an image depends on seed + id only)"})
    bm3d_limit: int = field(default=100, metadata={"help": "BM3D (~1 s/image) scores only the first N scored "
                                                           "images; 0 = all"})
    tune_images: int = field(default=32, metadata={"help": "images in the tuning set for classical "
                                                           "parameters; 0 = no tuning (defaults)"})
    tune_split: str = field(default="", metadata={"help": "split to tune on; '' = val, else train, else "
                                                          "hold out the first tune_images of --split"})
    picture_images: int = field(default=8, metadata={"help": "images per row in comparison.png"})
    batch_size: int = field(default=64, metadata={"help": "rows per Ray Data batch"})
    model_actors: int = field(default=0, metadata={"help": "model actors; 0 = sized from the cluster"})
    device: str = field(default="auto", metadata={"help": "model device", "choices": ("auto", "cpu", "cuda")})
    # How models run: jobs.denoise's flags, with its defaults (dae.inference_spec), so a model can be
    # scored exactly as the denoise job would run it.
    tile: int = flag("tile")
    tile_overlap: int = flag("tile_overlap")
    forward_batch: int = flag("forward_batch")
    forward_pixels: int = flag("forward_pixels")
    deterministic: bool = flag("deterministic")
    precision: str = flag("precision", choices=PRECISIONS)
    torch_threads: int = field(default=0, metadata={"help": "torch threads per model actor; 0: one per CPU of "
                                                            "the actor"})

    def inference_spec(self) -> InferenceSpec:
        """How the models are run, self-ensemble 1: each scored row sets its own size (--ensemble), and
        the actor pool's plan the device and threads."""
        return InferenceSpec.from_config(self, ensemble=1)


def check_config(cfg: EvaluateConfig) -> tuple[dict[str, NoiseSpec], list[str]]:
    """({canonical noise spec string: the parsed spec}, classical method names), or a clear error before
    any work. The noise specs are parsed here, once: the stages take the objects, and key rows, tables
    and pictures by the canonical strings."""
    if not cfg.data:
        raise ValueError("--data is required (a shard root, split dir, .parquet file or URI)")
    if not cfg.out:
        raise ValueError("--out is required (a directory or URI for the report)")
    if not cfg.noise:
        raise ValueError("give at least one --noise spec (e.g. gaussian:0.5)")
    specs = {str(spec): spec for spec in map(NoiseSpec.parse, cfg.noise)}
    if len(specs) != len(cfg.noise):
        raise ValueError(f"duplicate noise specs in {list(cfg.noise)}")
    names = baselines.validate_names(cfg.baselines)
    for n, lim in (("limit", cfg.limit), ("bm3d_limit", cfg.bm3d_limit), ("tune_images", cfg.tune_images),
                   ("picture_images", cfg.picture_images)):
        if lim < 0:
            raise ValueError(f"{n} must be >= 0, got {lim}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    cfg.inference_spec().check()
    if not cfg.ensemble or len(set(cfg.ensemble)) != len(cfg.ensemble):
        raise ValueError(f"--ensemble takes distinct sizes, got {list(cfg.ensemble)}")
    from ..forward import check_ensemble  # (torch: imported when a config is checked, not at import)

    for n in cfg.ensemble:
        check_ensemble(n)
    storage.check_access(cfg.data, must_exist=True)  # fail before any work, naming the cause
    shards.require_prepared(cfg.data)  # a prepare killed half way: refused, not evaluated on part of a split
    from ..checkpoint import model_dir

    for m in cfg.models:
        storage.check_access(model_dir(m), must_exist=True)  # pretrained:NAME: the shipped model's dir
    storage.check_access(cfg.out, write=True)
    return specs, names


def check_model_channels(cfg: EvaluateConfig, models: list[dict], channels: list[int]) -> None:
    for m in models:
        mc = int(m["config"].get("channels", 0))
        if [mc] != channels:
            raise ValueError(f"model {m['name']} ({m['dir']}) takes {mc}-channel images but the data "
                             f"{cfg.data} has {'/'.join(map(str, channels))}-channel images; evaluate it on "
                             f"data with {mc} channel(s)")
