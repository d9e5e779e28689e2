"""The GPU check's config (every field a ``jobs.gpu_check`` flag), its sizes, tolerances and targets."""

from __future__ import annotations

from dataclasses import dataclass, field

NO_GPU = ("error: no CUDA GPU is visible (torch.cuda.is_available() is False); run on a GPU machine or "
          "pass --device cpu for a dry run")
# Full sizes (1 GPU, 16 CPUs, 3-4 minutes estimated) and the CPU dry run's (2 cores, about 1-2 minutes).
FULL = dict(train_images=50_000, test_images=5_000, small_rows_per_shard=5_000, photos=1_000, photo_hw=(321, 481),
            photo_rows_per_shard=50, width=32, epochs=2, batch_size=256, agree_small=10_000, agree_photos=200,
            tile_hw=(320, 480))
SMALL = dict(train_images=320, test_images=64, small_rows_per_shard=100, photos=8, photo_hw=(80, 120),
             photo_rows_per_shard=2, width=8, epochs=1, batch_size=64, agree_small=200, agree_photos=4,
             tile_hw=(160, 148))
SMALL_HW = 28
NOISE = "gaussian:0.3"
LR, SEED, VAL_SEED = 2e-3, 0, 1234  # TrainConfig's val_seed default: the plain loop validates on the same noise
# tests/unit/test_denoise.py::test_tiles_match_whole_image_within_tolerance: tiles and tolerances
TILE, TILE_OVERLAP, TILE_MAX, TILE_MEAN = 96, 24, 0.01, 2e-4
TRAIN_TARGET, DENOISE_TARGET, GPU_BUSY_TARGET = 0.9, 2.0, 60.0


@dataclass(frozen=True)
class GpuCheckConfig:
    device: str = field(default="cuda", metadata={"help": "cuda: the real check; cpu: a dry run",
                                                  "choices": ("cuda", "cpu")})
    small: bool = field(default=False, metadata={"help": "tiny sizes (a few hundred images, 1 epoch)"})
    dry_run: bool = field(default=False, metadata={"help": "the same as --device cpu --small"})
    out: str = field(default="gpu_check_out", metadata={"help": "where gpu_check.json goes"})
    work: str = field(default="", metadata={"help": "scratch dir for shards, runs and outputs (default: a temp "
                                                    "dir, removed at the end)"})
