"""The GPU check's data, made on the spot (only the checkout travels to the GPU machine): synthetic
images with structure (smooth random fields, disks and rectangles, a fine texture), written as shards."""

from __future__ import annotations

import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageDraw

from dae import shards

from .config import SMALL_HW

BICUBIC = getattr(Image, "Resampling", Image).BICUBIC  # the GPU machine's Pillow may be older or newer


def _lerp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation weights: a smooth upsampling as one matrix product."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def small_images(n: int, seed: int, size: int = SMALL_HW) -> np.ndarray:
    """(n, size, size, 3) uint8: a smooth random field with a disk and a rectangle of random colors on it."""
    rng = np.random.default_rng(seed)
    a = _lerp_matrix(4, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((n, size, size, 3), np.uint8)
    for s in range(0, n, 5000):  # chunks: bounded float memory for 50,000 images
        k = min(5000, n - s)
        img = np.einsum("hi,nijc,wj->nhwc", a, rng.random((k, 4, 4, 3), dtype=np.float32), a,
                        optimize=True) * 0.6 + 0.1
        cy, cx = rng.uniform(4, size - 4, (2, k, 1, 1)).astype(np.float32)
        r = rng.uniform(3, 9, (k, 1, 1)).astype(np.float32)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        img = np.where(disk[..., None], rng.random((k, 1, 1, 3), dtype=np.float32), img)
        y0, x0 = rng.integers(0, size - 6, (2, k, 1, 1))
        h, w = rng.integers(4, 14, (2, k, 1, 1))
        rect = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
        img = np.where(rect[..., None], rng.random((k, 1, 1, 3), dtype=np.float32), img)
        out[s:s + k] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return out


def photo(seed: int, i: int, hw: tuple[int, int], texture: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 'photo': a bicubic-smooth random field, a few ellipses, rectangles and lines, and
    a fine texture (so its PNG is photo-sized: a flat synthetic image would decode and encode faster
    than real photos and flatter the CPU stages)."""
    rng = np.random.default_rng([seed, i])
    h, w = hw
    img = Image.fromarray((rng.random((5, 7, 3)) * 200 + 20).astype(np.uint8)).resize((w, h), BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(8):
        x0, x1 = sorted(rng.integers(0, w, 2).tolist())
        y0, y1 = sorted(rng.integers(0, h, 2).tolist())
        color = tuple(rng.integers(0, 256, 3).tolist())
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse([x0, y0, x1, y1], fill=color)
        elif kind == 1:
            draw.rectangle([x0, y0, x1, y1], fill=color)
        else:
            draw.line([x0, y0, x1, y1], fill=color, width=int(rng.integers(1, 6)))
    shift = (int(rng.integers(texture.shape[0])), int(rng.integers(texture.shape[1])))
    tex = np.roll(texture, shift, axis=(0, 1))[:h, :w]
    return np.clip(np.asarray(img, np.int16) + tex, 0, 255).astype(np.uint8)


def write_sets(work: str, sz: dict) -> dict:
    """WORK/small/{train,test} (28x28 RGB) and WORK/photos/photos (H x W RGB); returns what was written."""
    t0 = time.perf_counter()
    threads = max(1, min(32, os.cpu_count() or 1))  # PIL's PNG encoder and numpy release the GIL
    small_root, photo_root = os.path.join(work, "small"), os.path.join(work, "photos")
    with ThreadPoolExecutor(threads) as pool:
        for split, n, seed in (("train", sz["train_images"], 1), ("test", sz["test_images"], 2)):
            imgs = small_images(n, seed)
            chunks = pool.map(lambda s, imgs=imgs: [shards.encode_png(a) for a in imgs[s:s + 500]], range(0, n, 500))
            pngs = [png for chunk in chunks for png in chunk]
            with shards.ShardWriter(small_root, split, dataset="gpu-check-small", source="synthetic (jobs.gpu_check)",
                                    rows_per_shard=sz["small_rows_per_shard"]) as w:
                for i, png in enumerate(pngs):
                    w.add(id=f"small/{split}/{i:06d}", png=png, height=SMALL_HW, width=SMALL_HW, channels=3)
        h, w_ = sz["photo_hw"]
        texture = np.random.default_rng(3).normal(0, 4, (h + 64, w_ + 64, 3)).round().astype(np.int16)
        pngs = pool.map(lambda i: shards.encode_png(photo(4, i, (h, w_), texture)), range(sz["photos"]))
        with shards.ShardWriter(photo_root, "photos", dataset="gpu-check-photos", source="synthetic (jobs.gpu_check)",
                                rows_per_shard=sz["photo_rows_per_shard"]) as wr:
            for i, png in enumerate(pngs):
                wr.add(id=f"photos/{i:05d}", png=png, height=h, width=w_, channels=3)
    photo_bytes = sum(os.path.getsize(f) for f in shards.list_shards(photo_root, "photos"))
    return {"small": {"root": small_root, "train": sz["train_images"], "test": sz["test_images"],
                      "size": [SMALL_HW, SMALL_HW, 3]},
            "photos": {"root": photo_root, "images": sz["photos"], "size": [h, w_, 3],
                       "mean_png_kb": round(photo_bytes / max(1, sz["photos"]) / 1024, 1)},
            "seconds": round(time.perf_counter() - t0, 2)}


def subset(root: str, split: str, rows: int, rows_per_shard: int, dest: str) -> str:
    """DEST/SPLIT with the first shard files of ROOT/SPLIT holding about ``rows`` rows (hard links)."""
    files = shards.list_shards(root, split)[: max(1, math.ceil(rows / rows_per_shard))]
    os.makedirs(os.path.join(dest, split), exist_ok=True)
    for f in files:
        target = os.path.join(dest, split, os.path.basename(f))
        try:
            os.link(f, target)
        except OSError:
            shutil.copyfile(f, target)
    return dest
