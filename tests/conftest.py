"""Fixtures for both tiers: tests/unit (no Ray, no cluster, no S3 server) and tests/e2e (marked ``ray``;
its Ray and S3 fixtures are in tests/e2e/conftest.py). Plain helpers are in tests/helpers.py.

    make test-unit   # pytest -q tests/unit: under a minute on 2 cores
    make test        # pytest -q tests: both tiers
"""

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from mlflowserver import mlflow_server_fixture  # noqa: E402

TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """The tiers hold: every test lives in tests/unit or tests/e2e, those under tests/e2e carry the
    ``ray`` marker and those under tests/unit do not."""
    wrong = []
    for item in items:
        tier = next((t for t in ("unit", "e2e") if TESTS / t in Path(item.path).resolve().parents), None)
        if tier is None or (tier == "e2e") != (item.get_closest_marker("ray") is not None):
            wrong.append(item.nodeid)
    if wrong:
        raise pytest.UsageError("tests go in tests/unit (no Ray) or tests/e2e (modules with `pytestmark = "
                                f"pytest.mark.ray`); misplaced or mismarked: {wrong[:10]}")


# ---------------------------------------------------------------- shards


# One real MLflow tracking server for the whole run (its start takes 15-20 s): the tracker's unit tests
# and the e2e train run log to it, each in an experiment of its own.
mlflow_server = mlflow_server_fixture("session")


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """Factory of small Parquet image shards, written with ``dae.shards.ShardWriter``; returns the root
    (a fresh temporary folder unless ``root`` is given; a local path or an ``s3://`` prefix).

        root = tiny_shards(n_train=8, n_test=4, size=(28, 28), channels=1)   # random uint8 images,
            # ids DATASET/SPLIT/00000.., labels i % 10
        root = tiny_shards(rows={"test": [(id, image, label), ...]}, rows_per_shard=7)

    ``rows``: the content itself, per split: an image is a uint8/uint16 array ((H, W) or (H, W, C)),
    or raw bytes stored as they are for a 1x1 gray image (bad rows); labels may be None. Session-scoped
    so that module-scoped fixtures can use it too."""

    def make(n_train: int = 0, n_test: int = 0, size: tuple[int, int] = (28, 28), channels: int = 1, *,
             rows: dict | None = None, root=None, rows_per_shard: int = 10_000, dataset: str = "tiny",
             source: str = "tests", seed: int = 0) -> str:
        from dae.shards import ShardWriter

        if rows is None:
            rng = np.random.default_rng(seed)
            shape = tuple(size) if channels == 1 else (*size, channels)
            rows = {split: [(f"{dataset}/{split}/{i:05d}", rng.integers(0, 256, shape, dtype=np.uint8), i % 10)
                            for i in range(n)]
                    for split, n in (("train", n_train), ("test", n_test)) if n}
        elif n_train or n_test:
            raise TypeError("tiny_shards: give n_train/n_test or rows, not both")
        root = str(root) if root is not None else str(tmp_path_factory.mktemp("shards"))
        for split, split_rows in rows.items():
            with ShardWriter(root, split, dataset=dataset, source=source, rows_per_shard=rows_per_shard) as w:
                for rid, img, label in split_rows:
                    if isinstance(img, bytes):
                        w.add(id=rid, png=img, height=1, width=1, channels=1, label=label)
                    else:
                        w.add(id=rid, image=img, label=label)
        return root

    return make


# ---------------------------------------------------------------- models and data a unit and an e2e file share


@pytest.fixture(scope="module")
def fashion_model_dir(tmp_path_factory):
    """conv28k (1 channel) after a few quick denoising steps on Fashion-MNIST, saved as a model dir
    (the denoise tests)."""
    import torch

    from dae.checkpoint import save_model
    from dae.models import create_model
    from helpers import fashion

    torch.manual_seed(0)
    model = create_model("conv28k", channels=1)
    x = torch.from_numpy(fashion(64)).float().div(255).unsqueeze(1)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for step in range(20):  # a few steps: weights that are not the init, cheap on a loaded machine
        clean = x[(step * 16) % 64:(step * 16) % 64 + 16]
        noisy = (clean + 0.3 * torch.randn_like(clean)).clamp(0, 1)
        loss = torch.nn.functional.mse_loss(model(noisy), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = str(tmp_path_factory.mktemp("model") / "conv28k")
    save_model(model.eval(), path, noise="gaussian:0.3")
    return path


@pytest.fixture(scope="module")
def camera_shards(tiny_shards):
    """Shards of camera-photo crops (the evaluate tests): 26 test images, 8 train images, 8 per file."""
    from helpers import camera_crops

    return tiny_shards(rows={"test": [(f"cam/test/{i:04d}", img, None) for i, img in enumerate(camera_crops(26, 0))],
                             "train": [(f"cam/train/{i:04d}", img, None)
                                       for i, img in enumerate(camera_crops(8, 100))]},
                       rows_per_shard=8, dataset="cam", source="skimage.data.camera")


@pytest.fixture(scope="module")
def camera_models(tmp_path_factory):
    """Two small conv28k model dirs (the evaluate tests): "gray" (1 channel, a few steps on camera
    crops) and "rgb" (3 channels, untrained)."""
    import torch

    from dae.checkpoint import save_model
    from dae.models import create_model
    from helpers import camera_crops

    d = tmp_path_factory.mktemp("evalmodels")
    torch.manual_seed(0)
    model = create_model("conv28k", channels=1, filters=8)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x = torch.from_numpy(np.stack(camera_crops(16, 200)).astype(np.float32) / 255)[:, None]
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model((x + 0.2 * torch.randn_like(x)).clamp(0, 1)), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gray = save_model(model, str(d / "tiny-gray"), noise="gaussian:0.2")
    rgb = save_model(create_model("conv28k", channels=3, filters=8), str(d / "tiny-rgb"), noise="gaussian:0.2")
    return {"gray": gray, "rgb": rgb}
