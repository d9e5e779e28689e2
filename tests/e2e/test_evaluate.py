"""jobs.evaluate on Ray: the report's numbers are recomputed here from scratch.

One shared evaluation run (real Ray via ``ray_session``) over small camera-crop shards, with a
model dir trained for a few steps, 2 noise specs and 3 classical methods; the "wavelet" method is
made to look uninstalled (its real optional dependency, PyWavelets, reported missing) to check a
missing baseline is reported as skipped, never as zero. The pieces that need no Ray (dae.baselines,
the model scorer, the argument checks) are in tests/unit/test_evaluate.py.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dae import baselines, evaluate, metrics, precision, shards
from dae.checkpoint import load_model
from dae.jobutil import slug
from dae.noise import add_noise_batch
from helpers import run_job

pytestmark = pytest.mark.ray

NOISE = ["gaussian:0.2", "salt_pepper:0.1"]
LIMIT = 20


def _main(argv):
    return run_job("evaluate", *argv)


@pytest.fixture(scope="module")
def report(ray_session, camera_shards, camera_models, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("evalout"))
    real = baselines.availability

    def fake(name):  # wavelet's optional package looks uninstalled
        return (False, "python package 'pywt' is not installed (test)") if name == "wavelet" else real(name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(baselines, "availability", fake)
        r = _main(["--data", camera_shards, "--out", out, "--noise", *NOISE, "--models", camera_models["gray"],
                   "--baselines", "median", "tv", "wavelet", "bm3d", "--limit", str(LIMIT), "--bm3d-limit", "3",
                   "--tune-images", "4", "--picture-images", "3", "--batch-size", "8",
                   # the numbers are recomputed below in float32 on CPU; on GPU the models run in bf16
                   "--device", "cpu"])
    return r, out


def _scored(root, n=LIMIT, skip=0):
    """(ids, clean images) of the scored images: the first n test images in file order."""
    rows = list(shards.iter_rows(shards.list_shards(root, "test"), ["id", "image"]))[skip:skip + n]
    return [r["id"] for r in rows], [shards.to_float(shards.decode_png(r["image"])) for r in rows]


def _entry(r, noise, method):
    hits = [e for e in r["results"] if e["noise"] == noise and e["method"] == method]
    assert len(hits) == 1, (noise, method)
    return hits[0]


def test_report_numbers_recomputed(report, camera_shards, camera_models):
    r, _ = report
    ids, clean = _scored(camera_shards)
    model, _ = load_model(camera_models["gray"])
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
        # The model row: same images, same noise, the saved model run directly, in the precision the
        # report says the models ran in (bf16 on a CPU with AMX/AVX512-BF16: its kernels differ with the
        # batch, 20 images here and a padded 64 in the job, by a few 1e-4 dB).
        arith = r["model_actors"]["precision"]
        x = precision.to_channels_last(torch.from_numpy(np.stack(noisy)).permute(0, 3, 1, 2))
        with torch.inference_mode(), precision.autocast(arith, "cpu"):
            y = precision.prepare_model(model)(x).float().clamp(0, 1).permute(0, 2, 3, 1).numpy()
        e = _entry(r, spec, "tiny-gray")
        assert e["kind"] == "model" and e["images"] == LIMIT
        tol = 1e-4 if arith == "fp32" else 2e-3
        assert abs(e["psnr_mean"] - float(metrics.psnr(y, np.stack(clean)).mean())) < tol


def test_every_method_gets_identical_noisy_pixels(report, camera_shards):
    r, out = report
    ids, clean = _scored(camera_shards)
    t = pq.read_table(os.path.join(out, "per_image.parquet")).to_pylist()
    for spec in NOISE:
        assert r["same_input"][spec]["identical"] is True
        assert r["picture_same_input"][spec] is True
        # The hash each stage recorded of what it received == the hash of the noise computed here.
        want = {i: evaluate.array_hash(x) for i, x in zip(ids, add_noise_batch(clean, ids, spec, seed=0))}
        rows = [x for x in t if x["noise"] == spec]
        methods = {x["method"] for x in rows}
        assert {"noisy", "median", "tv", "tiny-gray"} <= methods
        for x in rows:
            assert x["input_hash"] == want[x["id"]], (x["method"], x["id"])
    # A different seed gives different pixels (the check above can fail).
    other = add_noise_batch(clean[:1], ids[:1], NOISE[0], seed=1)[0]
    assert evaluate.array_hash(other) != want[ids[0]]


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
    assert "dae evaluate" in on_disk["command"] and "--bm3d-limit 3" in on_disk["command"]
    assert on_disk["tuning"]["source"] == "train" and on_disk["tuning"]["images"] == 4
    assert not set(on_disk["tuning"]["ids"]) & {x for x in _scored_ids(on_disk)}


def _scored_ids(report_json):
    return [f"cam/test/{i:04d}" for i in range(report_json["data"]["images_scored"])]


def _rows(ids, clean):
    """Shard rows (id, uint8 image, no label) of the scored images."""
    return [(i, shards.from_float(img), None) for i, img in zip(ids, clean)]


def test_holdout_tuning_never_scores_tuning_images(ray_session, camera_shards, tmp_path, tiny_shards):
    # Only a test split: the first tune_images test images tune, the rest are scored.
    ids, clean = _scored(camera_shards, n=12)
    root = tiny_shards(rows={"test": _rows(ids, clean)}, root=tmp_path / "onlytest", rows_per_shard=5,
                       dataset="cam", source="test")
    out = str(tmp_path / "out")
    r = _main(["--data", root, "--out", out, "--noise", "gaussian:0.3", "--baselines", "median",
               "--tune-images", "4", "--picture-images", "2"])
    assert r["tuning"]["source"] == "holdout" and r["tuning"]["ids"] == ids[:4]
    scored = {x["id"] for x in pq.read_table(os.path.join(out, "per_image.parquet")).to_pylist()}
    assert scored == set(ids[4:])
    assert _entry(r, "gaussian:0.3", "median")["images"] == 8
    assert r["model_actors"] == {}


def test_shards_and_report_in_object_storage(s3_server, ray_session, camera_shards, tiny_shards):
    """--data and --out as s3:// URIs (SeaweedFS test server): every output goes through dae.storage."""
    import uuid

    from dae import storage

    s3_server.create_bucket("dae-eval")
    with s3_server.env():
        prefix = f"s3://dae-eval/t-{uuid.uuid4().hex[:8]}"
        ids, clean = _scored(camera_shards, n=6)
        tiny_shards(rows={"test": _rows(ids, clean)}, root=prefix, rows_per_shard=4, dataset="cam", source="test")
        out = storage.join(prefix, "eval")
        r = _main(["--data", prefix, "--out", out, "--noise", "gaussian:0.2", "--baselines", "median",
                   "--tune-images", "0", "--picture-images", "2"])
        assert _entry(r, "gaussian:0.2", "median")["images"] == 6
        for name in ("report.md", "report.json", "comparison.png", "per_image.parquet", "config.resolved.json"):
            assert storage.exists(storage.join(out, name)), name
        assert storage.read_json(storage.join(out, "report.json"))["results"][0]["method"] == "noisy"
