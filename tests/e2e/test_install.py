"""The package as a user gets it: the wheel built from what cluster/Dockerfile copies into the image,
installed outside the checkout (``pip install --no-deps --target`` over this venv), and its ``dae``
command run from another directory: the shipped models and the presets come with it, and no
top-level ``jobs`` package is installed."""

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from dae import shards
from helpers import REPO

pytestmark = pytest.mark.ray

DOCKERFILE = os.path.join(REPO, "cluster", "Dockerfile")


def docker_context(dest: str) -> list[str]:
    """Copies what the Dockerfile's COPY lines take from the repository (less the .dockerignore
    patterns) to ``dest``: the image's build context as its install sees it. Returns the sources."""
    text = open(DOCKERFILE).read()
    ignore = open(os.path.join(REPO, "cluster", "Dockerfile.dockerignore")).read().split()
    ignore = [p for p in ignore if not p.startswith("#")]
    srcs = []
    for line in re.findall(r"^COPY (?:--\S+ )*(.+)$", text, re.M):
        *parts, _target = line.split()
        srcs += parts
    skip = [p.removeprefix("**/") for p in ignore]

    def ignored(_d, names):
        return [n for n in names if any(fnmatch.fnmatch(n, p) for p in skip)]

    for src in srcs:
        s = os.path.join(REPO, src)
        if os.path.isdir(s):
            shutil.copytree(s, os.path.join(dest, src), ignore=ignored)
        else:
            shutil.copy2(s, os.path.join(dest, src))
    return srcs


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    ctx = tmp_path_factory.mktemp("docker-context")
    docker_context(str(ctx))
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: setuptools of this venv (pyproject's build-system), no download.
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(out), str(ctx)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (whl,) = [os.path.join(out, n) for n in os.listdir(out) if n.endswith(".whl")]
    return whl


def test_the_wheel_holds_the_command_models_and_presets_and_no_jobs_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"dae"}, tops  # nothing a user's own `jobs/` (or anything else) could collide with
    for name in os.listdir(os.path.join(REPO, "models")):
        for f in ("config.json", "model.safetensors", "README.md"):
            assert f"dae/pretrained/{name}/{f}" in names, (name, f)
    presets = sorted(n for n in os.listdir(os.path.join(REPO, "dae", "presets")) if n.endswith(".yaml"))
    assert presets and all(f"dae/presets/{p}" in names for p in presets)
    assert "dae/experiments/recipes/quality-natural.yaml" in names
    # every package of the source tree is in pyproject's explicit list, so in the wheel
    packages = {os.path.relpath(d, REPO) for d, _, files in os.walk(os.path.join(REPO, "dae"))
                if "__init__.py" in files}
    assert {f"{p}/__init__.py" for p in packages} <= set(names), sorted(
        f"{p}/__init__.py" for p in packages if f"{p}/__init__.py" not in names)
    (ep,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert re.search(r"^dae = dae\.cli:main$", zipfile.ZipFile(wheel).read(ep).decode(), re.M)


def test_the_installed_command_denoises_with_a_pretrained_model_from_another_directory(wheel, tmp_path):
    target = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target",
                        str(target), wheel], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy first; the checkout nowhere on the path (the venv's editable install of the
    # checkout comes after --target's directory: asserted below through dae.__file__).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH"))}
    env.update(PYTHONPATH=str(target), RAY_USAGE_STATS_ENABLED="0")
    dae_cmd = str(target / "bin" / "dae")

    def run(*argv):
        r = subprocess.run([dae_cmd, *map(str, argv)], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f"dae {argv}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout

    code = "import dae.checkpoint as c; print(c.__file__); print(c.MODELS_ROOT)"
    where = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    assert all(w.startswith(str(target)) for w in where), where
    models = json.loads(run("models", "--json"))
    assert {m["name"] for m in models} >= {"pretrained:gray-blind", "pretrained:color-blind"}
    train_help = run("train", "--help")
    assert "--config" in train_help and "train-fashion" in train_help

    # a few smooth RGB images (what the color model is for) as shards, written with the checkout
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    w = shards.ShardWriter(str(elsewhere / "photos"), "test", dataset="photos", source="test")
    for i in range(3):
        base = np.stack([(xx * (2 + i)) % 256, (yy * 3 + 40 * i) % 256, (xx + yy) % 256], axis=2)
        w.add(f"p{i}", (base * 0.8 + rng.integers(0, 40, base.shape)).astype(np.uint8))
    w.close()
    run("denoise", "--input", "photos", "--model", "pretrained:color-blind", "--output", "out", "--add-noise",
        "awgn:25", "-q")
    s = json.load(open(elsewhere / "out" / "summary.json"))
    assert s["rows_out"] == 3 and s["rows_failed"] == 0
    assert s["metrics"]["psnr_denoised"] > s["metrics"]["psnr_noisy"] + 3, s["metrics"]
