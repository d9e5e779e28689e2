"""The denoise job's pure pieces, without Ray: export names, actor plans, torch threads, tiles, batching,
argument checks and the duplicate finder. The job end to end on Ray is in tests/e2e/test_denoise.py."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dae import inference, shards
from dae.commands import denoise
from dae.denoise.scan import bucket_of, find_duplicates, scan_files
from dae.inference_spec import InferenceSpec
from dae.models import create_model
from helpers import HOSTILE, REPO, fashion


def test_export_name_never_leaves_the_folder():
    names = [inference.export_name(i) for i in HOSTILE]
    assert len(set(names)) == len(names)  # the hash keeps a/b and a_b apart
    for n in names:
        assert "/" not in n and "\\" not in n and not n.startswith(".") and n.endswith(".png")
        assert len(n) < 120 and os.path.basename(n) == n


def test_plan_actors_leaves_cpu_for_reads():
    # automatic CPU pool: half the CPUs, as 1-CPU actors, fixed size; tasks take 1 CPU
    p = inference.plan_actors(2, 0)
    assert (p["min_actors"], p["max_actors"], p["actor_cpus"], p["task_cpus"], p["device"]) == (1, 1, 1.0, 1.0, "cpu")
    p = inference.plan_actors(16, 0)
    assert (p["min_actors"], p["max_actors"], p["actor_cpus"]) == (8, 8, 1.0)
    p = inference.plan_actors(6, 0, min_actors=1)  # an autoscaling pool when asked for
    assert (p["min_actors"], p["max_actors"]) == (1, 3)
    p = inference.plan_actors(2, 0, min_actors=2, max_actors=2, cpus_per_actor=1)  # would hang: lowered, said so
    assert p["max_actors"] == 1 and p["min_actors"] == 1 and len(p["notes"]) == 2
    # half-CPU actors: as many as fit next to one free CPU, and tasks of half a CPU too
    p = inference.plan_actors(2, 0, min_actors=2, max_actors=2, cpus_per_actor=0.5)
    assert p["max_actors"] == 2 and p["task_cpus"] == 0.5 and not p["notes"]
    p = inference.plan_actors(1, 0)
    assert p["actor_cpus"] == 0.5 and p["max_actors"] == 1 and p["task_cpus"] == 0.5 and not p["notes"]
    p = inference.plan_actors(16, 2)
    assert p["device"] == "cuda" and p["max_actors"] == 2 and p["actor_gpus"] == 1.0 and p["task_cpus"] == 1.0
    with pytest.raises(ValueError, match="no GPU"):
        inference.plan_actors(4, 0, device="cuda")
    with pytest.raises(ValueError, match="valid: auto, cpu, cuda"):
        inference.plan_actors(4, 0, device="tpu")


def test_torch_threads_follow_the_actor():
    from dae.denoise import DenoiseConfig
    from dae.denoise.pipeline import plan_actors

    assert plan_actors(DenoiseConfig(), 2, 0)["torch_threads"] == 2  # 1-CPU CPU actor: 2 threads
    assert plan_actors(DenoiseConfig(cpus_per_actor=0.5), 2, 0)["torch_threads"] == 1
    assert plan_actors(DenoiseConfig(torch_threads=3), 2, 0)["torch_threads"] == 3
    assert plan_actors(DenoiseConfig(), 16, 2)["torch_threads"] == 1  # GPU actors


def test_tiles_match_whole_image_within_tolerance():
    """Stated tolerance: tiles of 96 px with 24 px overlap agree with whole-image inference within
    0.01 (2.6 gray levels) max and 2e-4 mean absolute difference, for a U-Net whose receptive field
    is wider than the overlap (measured: 0.0026 max, 2.8e-5 mean); without blending (overlap 0)
    the seams are far worse (0.027 max). Sides are multiples of the model's size multiple, so the
    whole-image pass has no border padding that the tiles would not have."""
    from skimage import data

    img = (data.camera()[100:260, 80:228].astype(np.float32) / 255)[:, :, None]  # 160 x 148
    torch.manual_seed(0)
    model = create_model("unet", channels=1, width=8).eval()
    whole = inference.denoise_images(model, [img], InferenceSpec(tile=4096))[0]
    assert inference.tile_starts(160, 96, 24) == [0, 64] and inference.tile_starts(148, 96, 24) == [0, 52]
    # small forward_pixels: tiles go through several fixed-size passes
    tiled = inference.denoise_images(model, [img, img[:50, :40]],
                                     InferenceSpec(tile=96, tile_overlap=24, forward_pixels=96 * 96 * 3))
    d = np.abs(tiled[0] - whole)
    assert tiled[0].shape == img.shape and d.max() < 0.01 and d.mean() < 2e-4, (d.max(), d.mean())
    np.testing.assert_array_equal(tiled[1], inference.denoise_images(model, [img[:50, :40]])[0])
    seams = np.abs(inference.denoise_images(model, [img], InferenceSpec(tile=96, tile_overlap=0))[0] - whole)
    assert seams.max() > 0.01 and seams.mean() > 3 * d.mean()


def test_self_ensemble_is_the_mean_of_the_views_turned_back():
    img = np.random.default_rng(0).random((20, 13, 3), dtype=np.float32)  # not square: turns change the shape
    views = [inference.dihedral(img, k) for k in range(8)]
    assert len({(v.shape, v.tobytes()) for v in views}) == 8
    for k, v in enumerate(views):
        np.testing.assert_array_equal(inference.dihedral(v, k, inverse=True), img)
    torch.manual_seed(0)
    model = create_model("unet", channels=3, width=8).eval()
    outs = [inference.dihedral(inference.denoise_images(model, [np.ascontiguousarray(v)])[0], k, inverse=True)
            for k, v in enumerate(views)]
    for n in (2, 4, 8):
        np.testing.assert_allclose(inference.denoise_images(model, [img], InferenceSpec(ensemble=n))[0],
                                   np.mean(outs[:n], 0), atol=1e-6)
    assert np.abs(outs[1] - outs[0]).max() > 1e-3  # a U-Net is not flip-invariant: the views do differ
    with pytest.raises(ValueError, match="self-ensemble size must be one of 1, 2, 4, 8, got 3"):
        inference.denoise_images(model, [img], InferenceSpec(ensemble=3))


def test_forward_results_do_not_depend_on_batching():
    torch.manual_seed(0)
    model = create_model("conv28k", channels=1).eval()
    imgs = [np.random.default_rng(i).random((28, 28, 1), dtype=np.float32) for i in range(40)]
    alone = [inference.denoise_images(model, [im], InferenceSpec(forward_batch=16))[0] for im in imgs[:5]]
    together = inference.denoise_images(model, imgs, InferenceSpec(forward_batch=16))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


def test_invalid_choices_list_the_valid_ones(tmp_path, fashion_model_dir, capsys, tiny_shards):
    with pytest.raises(SystemExit):
        denoise.get_args_parser().parse_args(["--device", "tpu"])
    assert "choose from 'auto', 'cpu', 'cuda'" in capsys.readouterr().err
    src = tiny_shards(rows={"test": [("a", fashion(1)[0], 0)]}, root=tmp_path / "in", rows_per_shard=4)
    # denoise.run, not main: main's logging setup would keep writing to capsys' closed stream later
    with pytest.raises(ValueError, match="valid kinds: gaussian, salt_pepper"):
        denoise.run(denoise.DenoiseConfig(input=src, model=fashion_model_dir, output=str(tmp_path / "o"),
                                          add_noise="pink:0.1"))
    with pytest.raises(ValueError, match="--model is required"):
        denoise.run(denoise.DenoiseConfig(input=src, output=str(tmp_path / "o")))
    with pytest.raises(ValueError, match="--ensemble must be one of 1, 2, 4, 8, got 6"):
        denoise.run(denoise.DenoiseConfig(input=src, model=fashion_model_dir, output=str(tmp_path / "o"), ensemble=6))


def test_duplicate_finder_pieces(tmp_path, tiny_shards):
    """The scan task's buckets and the per-bucket finder, without Ray: within and across files."""
    img = fashion(1)[0]
    a = tiny_shards(rows={"test": [("x", img, 0), ("y", img, 0), ("x", img, 0)]}, root=tmp_path / "a", rows_per_shard=8)
    b = tiny_shards(rows={"test": [("y", img, 0), ("z", img, 0)]}, root=tmp_path / "b", rows_per_shard=8)
    files = shards.list_shards(a, "test") + shards.list_shards(b, "test")
    meta, *buckets = scan_files(files, 0, 3, True)
    assert meta == [(3, {1: 3}, 784), (2, {1: 2}, 784)] and sum(t.num_rows for t in buckets) == 5
    ids = np.array(["x", "y", "z", "x"], object)
    np.testing.assert_array_equal(bucket_of(ids, 3), bucket_of(ids.copy(), 3))  # stable
    for j, t in enumerate(buckets):  # each id sits in the bucket its hash says, whatever the file
        assert all(bucket_of(np.array([i], object), 3)[0] == j for i in t.column("id").to_pylist())
    found = [find_duplicates(t) for t in buckets]
    assert sum(f[0] for f in found) == 2 and sum(f[1] for f in found) == 4
    shown = sorted(e for f in found for e in f[2])
    assert shown == [("x", 2, [0]), ("y", 2, [0, 1])]


def test_the_denoiser_tells_a_conditioned_model_its_level_and_says_which(tmp_path):
    """The sigma column: --sigma wins, else the --add-noise level, else an estimate per image; a model
    that takes no level gets NaN there (written out as null)."""
    from skimage import data

    from dae.checkpoint import save_model

    cam = data.camera()[:64, :96, None]
    batch = {"id": np.array(["a", "b"], dtype=object), "image": [shards.encode_png(cam)] * 2}
    for name in ("cunet", "unet"):
        save_model(create_model(name, channels=1, width=4), str(tmp_path / name))
    den = inference.Denoiser(str(tmp_path / "cunet"), InferenceSpec(device="cpu"))
    given = den(inference.prepare_batch(batch, 1, sigma=30 / 255))[inference.SIGMA]
    drawn = den(inference.prepare_batch(batch, 1, noise="awgn:10-50", seed=0))[inference.SIGMA]
    estimated = den(inference.prepare_batch(batch, 1))[inference.SIGMA]
    assert np.allclose(given, 30 / 255)
    assert 10 / 255 <= drawn.min() and drawn.max() <= 50 / 255 and drawn[0] != drawn[1]  # per image
    assert np.isfinite(estimated).all() and estimated[0] == estimated[1]  # the same photo: the same estimate
    other = inference.Denoiser(str(tmp_path / "unet"), InferenceSpec(device="cpu"))(
        inference.prepare_batch(batch, 1, sigma=0.1))
    assert np.isnan(other[inference.SIGMA]).all()


def test_the_cpu_tasks_modules_import_without_torch():
    """The job's CPU tasks (scan, read and prepare, finish and write, export) run in Ray worker processes
    that import the tasks' modules: torch came with them, about 2 s of CPU and 0.6 GB per worker,
    and a job starts several such workers (more on every node of a cluster)."""
    code = ("import sys; import dae.denoise, dae.denoise.scan, dae.denoise.files, dae.denoise.outputs, "
            "dae.denoise.export, dae.inference; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "[]", p.stdout[:500]
    # the actor's names are still there, from dae.forward on first use
    assert inference.denoise_images.__module__ == "dae.forward" and inference.DIHEDRAL
