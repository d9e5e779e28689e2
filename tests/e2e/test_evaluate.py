"""jobs.evaluate and dae.baselines: the report's numbers are recomputed here from scratch.

One shared evaluation run (real Ray via ``ray_session``) over small camera-crop shards, with a
model dir trained for a few steps, 2 noise specs and 3 classical methods; the "wavelet" method is
made to look uninstalled (its real optional dependency, PyWavelets, reported missing) to check a
missing baseline is reported as skipped, never as zero.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dae import baselines, evaluation, metrics, shards
from dae.checkpoint import load_model, save_model
from dae.jobutil import slug
from dae.models import create_model
from dae.noise import add_noise_batch
from dae.shards import ShardWriter

SIZE = 24
NOISE = ["gaussian:0.2", "salt_pepper:0.1"]
LIMIT = 20


def _crops(n: int, offset: int) -> list[np.ndarray]:
    from skimage import data

    cam = data.camera()  # 512 x 512 uint8, ships with scikit-image
    out = []
    for k in range(offset, offset + n):
        y, x = 16 + (k // 12) * 20, 16 + (k % 12) * 38  # distinct windows, all inside the photo
        out.append(np.ascontiguousarray(cam[y:y + SIZE, x:x + SIZE]))
    return out


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("evaldata"))
    with ShardWriter(root, "test", dataset="cam", source="skimage.data.camera", rows_per_shard=8) as w:
        for i, img in enumerate(_crops(26, 0)):
            w.add(id=f"cam/test/{i:04d}", image=img)
    with ShardWriter(root, "train", dataset="cam", source="skimage.data.camera", rows_per_shard=8) as w:
        for i, img in enumerate(_crops(8, 100)):
            w.add(id=f"cam/train/{i:04d}", image=img)
    return root


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, data_root):
    d = tmp_path_factory.mktemp("evalmodels")
    torch.manual_seed(0)
    model = create_model("conv28k", channels=1, filters=8)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x = torch.from_numpy(np.stack(_crops(16, 200)).astype(np.float32) / 255)[:, None]
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model((x + 0.2 * torch.randn_like(x)).clamp(0, 1)), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gray = save_model(model, str(d / "tiny-gray"), noise="gaussian:0.2")
    rgb = save_model(create_model("conv28k", channels=3, filters=8), str(d / "tiny-rgb"), noise="gaussian:0.2")
    return {"gray": gray, "rgb": rgb}


def _main(argv):
    from jobs.evaluate import get_args_parser, main

    return main(get_args_parser().parse_args(argv))


@pytest.fixture(scope="module")
def report(ray_session, data_root, model_dirs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("evalout"))
    real = baselines.availability

    def fake(name):  # wavelet's optional package looks uninstalled
        return (False, "python package 'pywt' is not installed (test)") if name == "wavelet" else real(name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(baselines, "availability", fake)
        r = _main(["--data", data_root, "--out", out, "--noise", *NOISE, "--models", model_dirs["gray"],
                   "--baselines", "median", "tv", "wavelet", "bm3d", "--limit", str(LIMIT), "--bm3d-limit", "3",
                   "--tune-images", "4", "--picture-images", "3", "--batch-size", "8",
                   # the numbers are recomputed below in float32 on CPU; on GPU the models run in bf16
                   "--device", "cpu"])
    return r, out


def _scored(data_root, n=LIMIT, skip=0):
    """(ids, clean images) of the scored images: the first n test images in file order."""
    rows = list(shards.iter_rows(shards.list_shards(data_root, "test"), ["id", "image"]))[skip:skip + n]
    return [r["id"] for r in rows], [shards.to_float(shards.decode_png(r["image"])) for r in rows]


def _entry(r, noise, method):
    hits = [e for e in r["results"] if e["noise"] == noise and e["method"] == method]
    assert len(hits) == 1, (noise, method)
    return hits[0]


def test_report_numbers_recomputed(report, data_root, model_dirs):
    r, _ = report
    ids, clean = _scored(data_root)
    model, _ = load_model(model_dirs["gray"])
    for spec in NOISE:
        noisy = list(add_noise_batch(clean, ids, spec, seed=0))
        e = _entry(r, spec, "noisy")
        assert e["images"] == LIMIT
        assert abs(e["psnr_mean"] - float(metrics.psnr(np.stack(noisy), np.stack(clean)).mean())) < 1e-6
        for name in ("median", "tv"):
            e = _entry(r, spec, name)
            assert e["status"] == "ok" and e["images"] == LIMIT
            outs = [baselines.apply(name, x, baselines.noise_sigma(spec, x), e["params"]) for x in noisy]
            p = metrics.psnr(np.stack(outs), np.stack(clean)).numpy()
            s = metrics.ssim(np.stack(outs), np.stack(clean)).numpy()
            assert abs(e["psnr_mean"] - p.mean()) < 1e-6, (spec, name)
            assert abs(e["ssim_mean"] - s.mean()) < 1e-6, (spec, name)
            assert abs(e["psnr_std"] - p.std()) < 1e-6
            assert e["sec_per_image"] > 0
        # The model row: same images, same noise, the saved model run directly.
        with torch.inference_mode():
            y = model(torch.from_numpy(np.stack(noisy)).permute(0, 3, 1, 2)).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        e = _entry(r, spec, "tiny-gray")
        assert e["kind"] == "model" and e["images"] == LIMIT
        assert abs(e["psnr_mean"] - float(metrics.psnr(y, np.stack(clean)).mean())) < 1e-4


def test_every_method_gets_identical_noisy_pixels(report, data_root):
    r, out = report
    ids, clean = _scored(data_root)
    t = pq.read_table(os.path.join(out, "per_image.parquet")).to_pylist()
    for spec in NOISE:
        assert r["same_input"][spec]["identical"] is True
        assert r["picture_same_input"][spec] is True
        # The hash each stage recorded of what it received == the hash of the noise computed here.
        want = {i: evaluation.array_hash(x) for i, x in zip(ids, add_noise_batch(clean, ids, spec, seed=0))}
        rows = [x for x in t if x["noise"] == spec]
        methods = {x["method"] for x in rows}
        assert {"noisy", "median", "tv", "tiny-gray"} <= methods
        for x in rows:
            assert x["input_hash"] == want[x["id"]], (x["method"], x["id"])
    # A different seed gives different pixels (the check above can fail).
    other = add_noise_batch(clean[:1], ids[:1], NOISE[0], seed=1)[0]
    assert evaluation.array_hash(other) != want[ids[0]]


def test_missing_optional_baseline_is_skipped_not_zero(report):
    r, out = report
    for spec in NOISE:
        e = _entry(r, spec, "wavelet")
        assert e["status"] == "skipped" and "pywt" in e["reason"]
        assert e["psnr_mean"] is None and e["ssim_mean"] is None and e["images"] == 0
    assert {"method": "wavelet", "reason": "python package 'pywt' is not installed (test)"} in r["skipped"]
    md = open(os.path.join(out, "report.md")).read()
    assert "wavelet skipped" in md and "| wavelet | classical | skipped |" in md
    per_image = pq.read_table(os.path.join(out, "per_image.parquet")).to_pylist()
    assert not [x for x in per_image if x["method"] == "wavelet"]


def test_bm3d_runs_on_its_subset_or_is_skipped(report):
    r, _ = report
    for spec in NOISE:
        e = _entry(r, spec, "bm3d")
        if baselines.availability("bm3d")[0]:
            assert e["status"] == "ok" and e["images"] == 3
            assert e["bm3d_subset"]["images"] == 3 and _entry(r, spec, "median")["bm3d_subset"]["images"] == 3
            assert e["psnr_mean"] > 0
        else:
            assert e["status"] == "skipped" and "bm3d" in e["reason"]


def test_outputs_contain_every_pair(report):
    r, out = report
    methods = ["noisy", "median", "tv", "wavelet", "bm3d", "tiny-gray"]
    on_disk = json.load(open(os.path.join(out, "report.json")))
    assert on_disk["results"] == json.loads(json.dumps(r["results"]))
    pairs = {(e["noise"], e["method"]) for e in on_disk["results"]}
    assert pairs == {(s, m) for s in NOISE for m in methods}
    md = open(os.path.join(out, "report.md")).read()
    for spec in NOISE:
        section = md.split(f"## {spec}")[1].split("## ")[0]
        for m in methods:
            assert f"| {m} |" in section, (spec, m)
        assert os.path.getsize(os.path.join(out, f"comparison_{slug(spec)}.png")) > 0
    from PIL import Image

    img = Image.open(os.path.join(out, "comparison.png"))
    # rows: clean + per spec (noisy + median, tv, bm3d if installed, model); 3 images + labels
    n_rows = 1 + len(NOISE) * (2 + 1 + 1 + int(baselines.availability("bm3d")[0]))
    assert img.height >= n_rows * 72
    v = on_disk["versions"]
    for k in ("torch", "ray", "numpy", "scikit-image", "dae"):
        assert v[k] and v[k] != "not installed"
    assert "python -m jobs.evaluate" in on_disk["command"] and "--bm3d-limit 3" in on_disk["command"]
    assert on_disk["tuning"]["source"] == "train" and on_disk["tuning"]["images"] == 4
    assert not set(on_disk["tuning"]["ids"]) & {x for x in _scored_ids(on_disk)}


def _scored_ids(report_json):
    return [f"cam/test/{i:04d}" for i in range(report_json["data"]["images_scored"])]


def test_holdout_tuning_never_scores_tuning_images(ray_session, data_root, tmp_path):
    # Only a test split: the first tune_images test images tune, the rest are scored.
    root = str(tmp_path / "onlytest")
    ids, clean = _scored(data_root, n=12)
    with ShardWriter(root, "test", dataset="cam", source="test", rows_per_shard=5) as w:
        for i, img in zip(ids, clean):
            w.add(id=i, image=shards.from_float(img))
    out = str(tmp_path / "out")
    r = _main(["--data", root, "--out", out, "--noise", "gaussian:0.3", "--baselines", "median",
               "--tune-images", "4", "--picture-images", "2"])
    assert r["tuning"]["source"] == "holdout" and r["tuning"]["ids"] == ids[:4]
    scored = {x["id"] for x in pq.read_table(os.path.join(out, "per_image.parquet")).to_pylist()}
    assert scored == set(ids[4:])
    assert _entry(r, "gaussian:0.3", "median")["images"] == 8
    assert r["model_actors"] == {}


def test_model_scorer_runs_models_as_the_denoise_job(model_dirs):
    """ModelScorer scores exactly dae.inference.denoise_images' outputs (clipped to [0, 1]): the
    denoise job's tiles and fixed-size, zero-padded forward passes, not a forward code of its own.
    A 24 x 600 image is wider than the default 512 px tile, so it is denoised in blended tiles."""
    from skimage import data

    from dae import inference

    cam = data.camera()
    wide = np.concatenate([cam[100:124], cam[200:224, :88]], axis=1)
    clean = [x.astype(np.float32)[:, :, None] / 255 for x in [*_crops(5, 250), wide]]
    noisy = list(add_noise_batch(clean, [str(i) for i in range(6)], "gaussian:0.2", seed=0))
    threads = torch.get_num_threads()
    try:
        out = evaluation.ModelScorer([("m", model_dirs["gray"])], device="cpu")(
            {"noisy": shards.stack_or_ragged(noisy), "clean": shards.stack_or_ragged(clean)})
        model, _ = load_model(model_dirs["gray"])
        tiled = [np.clip(y, 0, 1) for y in inference.denoise_images(model, noisy)]
        with torch.inference_mode():
            whole = model(torch.from_numpy(noisy[5]).permute(2, 0, 1)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    finally:
        torch.set_num_threads(threads)  # the actor pins its threads; the rest of the session keeps its own
    assert not np.array_equal(whole, tiled[5])  # tiling shows: the check below can tell the two apart
    want = evaluation.score_images(tiled, clean)
    assert np.array_equal(out["m__psnr"], want[0]) and np.array_equal(out["m__ssim"], want[1])
    assert out["m__hash"].tolist() == [evaluation.array_hash(x) for x in noisy]


def test_model_actors_sized_like_denoise():
    cfg = evaluation.EvaluateConfig
    # 2 CPUs: one 1-CPU actor, one CPU left to the read, noise and classical tasks.
    p = evaluation.plan_model_actors(cfg(), 2, 0)
    assert (p["min_actors"], p["max_actors"], p["actor_cpus"], p["task_cpus"], p["device"]) == (1, 1, 1.0, 1.0, "cpu")
    # Automatic CPU pools: a quarter of the CPUs, at most 4; an explicit count is kept when it fits.
    assert evaluation.plan_model_actors(cfg(), 8, 0)["max_actors"] == 2
    assert evaluation.plan_model_actors(cfg(), 64, 0)["max_actors"] == 4
    assert evaluation.plan_model_actors(cfg(model_actors=3), 8, 0)["max_actors"] == 3
    # 1 CPU: a half-CPU actor, and tasks that fit next to it (1-CPU tasks would never be placed).
    p = evaluation.plan_model_actors(cfg(), 1, 0)
    assert p["actor_cpus"] == 0.5 and p["task_cpus"] == 0.5 and p["max_actors"] == 1
    p = evaluation.plan_model_actors(cfg(), 8, 2)
    assert (p["max_actors"], p["actor_gpus"], p["device"]) == (2, 1.0, "cuda")
    assert evaluation.plan_model_actors(cfg(device="cpu"), 8, 2)["device"] == "cpu"
    with pytest.raises(ValueError, match="no GPU"):
        evaluation.plan_model_actors(cfg(device="cuda"), 8, 0)


def test_unknown_baseline_fails_listing_valid(tmp_path, data_root):
    with pytest.raises(ValueError, match="unknown baseline 'gauss'.*median, nlm, tv, bilateral, wavelet, bm3d"):
        _main(["--data", data_root, "--out", str(tmp_path), "--baselines", "median", "gauss"])


def test_model_channel_mismatch_fails_clearly(tmp_path, data_root, model_dirs):
    with pytest.raises(ValueError, match="tiny-rgb.*3-channel images but the data .* 1-channel"):
        _main(["--data", data_root, "--out", str(tmp_path), "--models", model_dirs["rgb"], "--baselines", "median"])


# ---------------------------------------------------------------- dae.baselines on its own (no Ray)


@pytest.mark.parametrize("channels", [1, 3])
def test_baselines_shape_range_and_denoise(channels):
    from skimage import data

    img = (data.astronaut()[200:232, 200:232] / 255.0).astype(np.float32)
    img = img if channels == 3 else img.mean(axis=2, keepdims=True)
    noisy = add_noise_batch(img[None], ["x"], "gaussian:0.1", seed=0)[0]
    before = float(metrics.psnr(noisy, img)[0])
    for name in baselines.BASELINES:
        if not baselines.availability(name)[0]:
            continue
        ro = noisy.copy()
        ro.flags.writeable = False  # Ray hands read-only arrays; no method may write its input
        out = baselines.apply(name, ro, baselines.noise_sigma("gaussian:0.1", noisy))
        assert out.shape == img.shape and out.dtype == np.float32
        assert 0 <= out.min() and out.max() <= 1
        if name != "median":  # median is for impulse noise
            assert float(metrics.psnr(out, img)[0]) > before, name


def test_tune_picks_best_on_tuning_set_deterministically():
    from skimage import data

    img = (data.camera()[100:132, 100:132, None] / 255.0).astype(np.float32)
    clean = [img, img[::-1].copy()]
    noisy = list(add_noise_batch(clean, ["a", "b"], "salt_pepper:0.3", seed=0))
    sig = [baselines.noise_sigma("salt_pepper:0.3", x) for x in noisy]
    a = baselines.tune("median", clean, noisy, sig)
    assert a == baselines.tune("median", clean, noisy, sig)
    best = max(a["grid"], key=lambda g: g["psnr"])
    assert a["params"] == best["params"] and len(a["grid"]) == len(baselines.BASELINES["median"].grid)
    assert baselines.tune("tv", clean, noisy, sig, grid=[])["params"] == baselines.BASELINES["tv"].params()


def test_noise_sigma_uses_level_or_estimate():
    rng = np.random.default_rng(0)
    flat = np.full((32, 32, 1), 0.5, np.float32)
    assert baselines.noise_sigma("gaussian:0.3", flat) == pytest.approx(0.3)
    noisy = np.clip(flat + 0.1 * rng.standard_normal(flat.shape), 0, 1).astype(np.float32)
    assert baselines.noise_sigma("gaussian:0.05-0.3", noisy) == pytest.approx(0.1, rel=0.25)


def test_model_names_from_run_dirs(tmp_path):
    m = create_model("conv28k", channels=1, filters=4)
    dirs = [save_model(m, str(tmp_path / run / "best_model")) for run in ("unet-g05", "conv-g05")]
    dup = save_model(m, str(tmp_path / "x" / "unet-g05"))
    names = [e["name"] for e in evaluation._model_entries([*dirs, dup], {"noisy"})]
    assert names == ["unet-g05", "conv-g05", "unet-g05-conv28k"]


def test_shards_and_report_in_object_storage(s3_server, ray_session, data_root):
    """--data and --out as s3:// URIs (SeaweedFS test server): every output goes through dae.storage."""
    import uuid

    from dae import storage

    s3_server.create_bucket("dae-eval")
    with s3_server.env():
        prefix = f"s3://dae-eval/t-{uuid.uuid4().hex[:8]}"
        ids, clean = _scored(data_root, n=6)
        with ShardWriter(prefix, "test", dataset="cam", source="test", rows_per_shard=4) as w:
            for i, img in zip(ids, clean):
                w.add(id=i, image=shards.from_float(img))
        out = storage.join(prefix, "eval")
        r = _main(["--data", prefix, "--out", out, "--noise", "gaussian:0.2", "--baselines", "median",
                   "--tune-images", "0", "--picture-images", "2"])
        assert _entry(r, "gaussian:0.2", "median")["images"] == 6
        for name in ("report.md", "report.json", "comparison.png", "per_image.parquet", "config.resolved.json"):
            assert storage.exists(storage.join(out, name)), name
        assert storage.read_json(storage.join(out, "report.json"))["results"][0]["method"] == "noisy"
