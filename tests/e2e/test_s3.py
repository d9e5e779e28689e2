"""Object storage end to end against a real S3-compatible server (SeaweedFS on 127.0.0.1).

The server is started once per session by the ``s3_server`` fixture (tests/e2e/conftest.py,
tests/s3server.py); tests needing it skip only when it cannot start, saying why. The storage checks
that need no server (redaction, URI errors, local paths) are in tests/unit/test_storage.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import numpy as np
import pytest

from dae import storage
from helpers import needs_mnist5k

pytestmark = pytest.mark.ray

BUCKET = "dae-test"


@pytest.fixture(scope="module")
def s3(s3_server):
    """The server with AWS_* variables pointing at it and the test bucket created."""
    s3_server.create_bucket(BUCKET)
    with s3_server.env():
        yield s3_server


@pytest.fixture
def prefix(s3):
    """A fresh s3://BUCKET/PREFIX for one test."""
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------- basic round trips


def test_roundtrip(prefix):
    p = storage.join(prefix, "a", "b.bin")
    assert not storage.exists(p)
    storage.write_bytes(p, b"hello" * 1000)
    assert storage.exists(p) and storage.read_bytes(p) == b"hello" * 1000
    storage.write_json(storage.join(prefix, "x.json"), {"k": [1, 2]})
    assert storage.read_json(storage.join(prefix, "x.json")) == {"k": [1, 2]}
    storage.write_bytes(storage.join(prefix, "a", "_SUCCESS"), b"")  # hidden from listings
    assert storage.list_files(prefix, recursive=True) == [storage.join(prefix, "a", "b.bin"),
                                                          storage.join(prefix, "x.json")]
    assert storage.list_files(prefix, ".json") == [storage.join(prefix, "x.json")]
    assert storage.is_dir(storage.join(prefix, "a"))
    storage.delete(p)
    assert not storage.exists(p)
    storage.delete(prefix)
    assert storage.list_files(prefix, recursive=True) == []


def test_write_bytes_never_shows_partial_object(prefix, s3):
    """The completeness rule on object storage: a reader polling while a 12 MiB object (several
    multipart parts) and then its marker are written sees the data object missing or whole, and
    whenever the marker exists the data is complete."""
    path = storage.join(prefix, "big.bin")
    marker = path + ".done"
    data = np.arange(12 << 20, dtype=np.uint32).astype(np.uint8).tobytes()
    seen: list[tuple[str, bool]] = []
    done = threading.Event()

    def poll():
        while not done.is_set():
            has_marker = storage.exists(marker)  # checked first: the data must be complete after it
            try:
                got = storage.read_bytes(path)
            except FileNotFoundError:
                seen.append(("marker" if has_marker else "missing", not has_marker))
                continue
            seen.append(("marker" if has_marker else "found", got == data))

    t = threading.Thread(target=poll)
    t.start()
    try:
        time.sleep(0.05)
        storage.write_bytes(path, data)
        storage.write_bytes(marker, b"")
        deadline = time.monotonic() + 30
        while not any(k == "marker" for k, _ in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        done.set()
        t.join()
    assert storage.read_bytes(path) == data
    kinds = {k for k, _ in seen}
    assert "missing" in kinds and "marker" in kinds, f"poller too slow to tell: saw only {kinds}"
    bad = [s for s in seen if not s[1]]
    assert not bad, f"partial or missing data seen: {bad[:5]} of {len(seen)} polls"


def test_killed_upload_leaves_no_object(prefix, s3):
    """A writer killed mid-upload (parts sent, upload never completed) leaves no object behind."""
    path = storage.join(prefix, "killed.bin")
    code = textwrap.dedent(f"""
        import sys, time
        from dae import storage
        fs, p = storage.resolve({path!r})
        f = fs.open_output_stream(p)
        f.write(b"x" * (12 << 20))   # > one multipart part: parts go out before close
        f.flush()
        print("written", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    try:
        assert proc.stdout.readline().strip() == "written"
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    assert not storage.exists(path)
    assert storage.list_files(prefix, recursive=True) == []


# ---------------------------------------------------------------- shards, Ray Data, models


def test_shards_and_ray_data_from_bucket(prefix, ray_session, tiny_shards):
    from dae import data, shards

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (25, 12, 10), dtype=np.uint8)
    tiny_shards(rows={"train": [(f"t/{i:03d}", im, i % 3) for i, im in enumerate(imgs)]}, root=prefix,
                rows_per_shard=10, dataset="t", source="test")
    files = shards.list_shards(prefix, "train")
    assert [f.rsplit("/", 1)[1] for f in files] == ["part-00000.parquet", "part-00001.parquet",
                                                    "part-00002.parquet"]
    assert all(f.startswith("s3://") for f in files)
    t = shards.read_shard(files[1])
    assert t.num_rows == 10 and shards.shard_metadata(files[1])["dae.dataset"] == "t"
    np.testing.assert_array_equal(shards.decode_png(t.column("image")[0].as_py())[:, :, 0], imgs[10])

    ds = data.read_shards(prefix, "train")
    rows = sorted(ds.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == [f"t/{i:03d}" for i in range(25)]
    np.testing.assert_array_equal(shards.decode_png(rows[24]["image"])[:, :, 0], imgs[24])

    # Ray Data writing into the bucket with the same filesystem, then reading it back.
    out = storage.join(prefix, "copy")
    fs, inner = storage.resolve(out)
    ds.map_batches(shards.decode_batch, batch_format="numpy").drop_columns(["image"]).write_parquet(
        inner, filesystem=fs)
    import ray.data
    written = storage.list_files(out, ".parquet")
    assert written and all(f.startswith("s3://") for f in written)
    ids = sorted(r["id"] for r in ray.data.read_parquet([storage.resolve(f)[1] for f in written],
                                                        filesystem=fs).take_all())
    assert ids == [f"t/{i:03d}" for i in range(25)]


def test_model_to_and_from_bucket(prefix):
    import torch

    from dae.checkpoint import load_model, save_model
    from dae.models import create_model

    torch.manual_seed(0)
    m = create_model("keras_blog", channels=1)
    d = storage.join(prefix, "model")
    save_model(m, d, noise="gaussian:0.5")
    assert storage.exists(storage.join(d, "config.json")) and storage.exists(storage.join(d, "model.safetensors"))
    m2, cfg = load_model(d)
    assert cfg["noise"] == "gaussian:0.5"
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), m2(x))


# ---------------------------------------------------------------- access checks


def test_check_access_ok(prefix):
    storage.check_access(prefix, write=True)
    storage.check_access(prefix, write=False)
    assert storage.list_files(prefix, recursive=True) == [], "the write probe must be cleaned up"
    with pytest.raises(storage.StorageError, match="does not exist") as e:
        storage.check_access(storage.join(prefix, "nothing"), must_exist=True)
    assert isinstance(e.value, FileNotFoundError)
    storage.write_bytes(storage.join(prefix, "one.parquet"), b"x")
    storage.check_access(storage.join(prefix, "one.parquet"), must_exist=True)  # a file is fine too


def test_check_access_missing_bucket(s3):
    t0 = time.perf_counter()
    with pytest.raises(storage.StorageError) as e:
        storage.check_access("s3://no-such-bucket-dae/x", write=True)
    assert str(e.value) == f"bucket 'no-such-bucket-dae' does not exist at endpoint {s3.endpoint}"
    assert isinstance(e.value, FileNotFoundError)
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("write", [False, True])
def test_check_access_bad_credentials(s3, write):
    with s3.env(AWS_SECRET_ACCESS_KEY="wrong-secret-123456"):
        t0 = time.perf_counter()
        with pytest.raises(storage.StorageError, match="credentials rejected by endpoint " + s3.endpoint) as e:
            storage.check_access(f"s3://{BUCKET}/x", write=write)
        assert time.perf_counter() - t0 < 10
        assert "wrong-secret-123456" not in str(e.value)
    with s3.env(AWS_ACCESS_KEY_ID="nobody-at-all"):
        with pytest.raises(storage.StorageError, match="credentials rejected"):
            storage.check_access(f"s3://{BUCKET}/x", write=write)


def test_check_access_unreachable_endpoint(s3):
    from s3server import _free_ports

    dead = f"http://127.0.0.1:{_free_ports(1)[0]}"
    with s3.env(AWS_ENDPOINT_URL=dead, AWS_ENDPOINT_URL_S3=dead):
        t0 = time.perf_counter()
        with pytest.raises(storage.StorageError, match=f"cannot reach endpoint {dead}"):
            storage.check_access(f"s3://{BUCKET}/x")
        assert time.perf_counter() - t0 < 10


# ---------------------------------------------------------------- configuration and redaction


def test_endpoint_flag_reaches_ray_workers(s3, ray_session):
    """--s3-endpoint (configure) works with no endpoint in the environment, and a Ray worker whose own
    environment has no S3 settings at all reads and writes the bucket through the settings the driver
    shared with this Ray job."""
    import argparse

    import ray

    path = f"s3://{BUCKET}/cfg-{uuid.uuid4().hex[:8]}/from-driver.txt"
    with s3.env(AWS_ENDPOINT_URL=None, AWS_ENDPOINT_URL_S3=None):
        parser = argparse.ArgumentParser()
        storage.add_s3_args(parser)
        storage.configure_from_args(parser.parse_args(["--s3-endpoint", s3.endpoint]))
        assert os.environ["AWS_ENDPOINT_URL"] == s3.endpoint
        assert storage.worker_env() == {"AWS_ENDPOINT_URL_S3": s3.endpoint, "AWS_REGION": s3.region}
        storage.write_bytes(path, b"driver")

        @ray.remote(num_cpus=0)
        def in_worker(p):
            import os

            from dae import storage as st

            names = [n for n in os.environ if n.startswith("AWS_")]
            saved = {n: os.environ.pop(n) for n in names}  # as on a node that never had them
            try:
                st.write_bytes(p + ".worker", st.read_bytes(p) + b"+worker")
                return sorted(st.settings())
            finally:
                os.environ.update(saved)

        keys = ray.get(in_worker.remote(path), timeout=120)
        assert storage.read_bytes(path + ".worker") == b"driver+worker"
        assert {"endpoint", "access_key", "secret_key"} <= set(keys)
    storage.share_with_ray()  # the fixture's variables are back: publish them again


def test_saved_config_is_redacted(prefix, s3):
    import dataclasses

    from dae.jobutil import save_resolved_config

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        data: str = "s3://AKIAEXAMPLE:sup3rsecret@bucket/shards"
        out: str = ""

    p = save_resolved_config(Cfg(out=prefix), prefix, note=f"key {s3.secret_key}")
    text = storage.read_bytes(p).decode()
    assert "sup3rsecret" not in text and s3.secret_key not in text and s3.access_key not in text
    assert json.loads(text)["data"] == "s3://***@bucket/shards"


def test_filesystem_repr_has_no_secret(s3):
    fs, _ = storage.resolve(f"s3://{BUCKET}/x")
    assert s3.secret_key not in repr(fs) and s3.secret_key not in str(fs)


# ---------------------------------------------------------------- Ray Train checkpoints in the bucket


# ---------------------------------------------------------------- the jobs end to end, bucket to bucket


def _job(name):
    import importlib

    try:
        return importlib.import_module(f"jobs.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"jobs.{name}":
            pytest.skip(f"jobs/{name}.py does not exist yet")
        raise


def _run_job(name, *argv):
    mod = _job(name)
    return mod.main(mod.get_args_parser().parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def e2e(s3, ray_session):
    """s3://BUCKET/e2e-XXXX with mnist5k shards prepared into it by the prepare job."""
    needs_mnist5k()  # the real digits, or a skip saying why
    root = f"s3://{BUCKET}/e2e-{uuid.uuid4().hex[:8]}"
    data = storage.join(root, "data")
    summary = _run_job("prepare", "--source", "mnist5k", "--limit", 64, "--rows-per-shard", 32, "--out", data)
    return {"root": root, "data": data, "prepare": summary}


def test_prepare_job_to_bucket(e2e, s3):
    from dae import shards

    s = e2e["prepare"]
    assert s["splits"]["train"] == {"images": 64, "files": 2} and s["splits"]["test"]["images"] == 64
    files = shards.list_shards(e2e["data"], "train")
    assert [f.rsplit("/", 1)[1] for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    assert shards.read_shard(files[0]).num_rows == 32
    for name in ("summary.json", "config.resolved.json"):
        text = storage.read_bytes(storage.join(e2e["data"], name)).decode()
        assert s3.secret_key not in text and s3.access_key not in text


@pytest.mark.slow
def test_train_job_in_bucket_interrupted_then_resumed(e2e, s3, tmp_path):
    """Run 1 dies at the start of epoch 2 (after the epoch-1 checkpoint went to the bucket);
    run 2 with the same --run-name and --storage continues from that checkpoint."""
    from ray.train import TrainingFailedError

    from dae.jobutil import stage_config
    from dae.train import TrainConfig, run

    from .test_train import fail_once  # the on_epoch_start hook that kills the last rank once

    runs = storage.join(e2e["root"], "runs")
    args = ["--data", e2e["data"], "--model", "keras_blog", "--epochs", 2, "--batch-size", 32,
            "--workers", 1, "--samples", 4, "--storage", runs, "--run-name", "e2e", "--max-failures", 0]
    parser = _job("train").get_args_parser()
    with pytest.raises(TrainingFailedError):  # the train job's stage, as its main runs it, with the hook
        run(stage_config(parser.parse_args([str(a) for a in args]), TrainConfig),
            on_epoch_start=fail_once(2, str(tmp_path / "failed-once")))
    assert (tmp_path / "failed-once").exists(), "run 1 did not reach the injected failure"
    ckpts = [f for f in storage.list_files(storage.join(runs, "e2e"), recursive=True) if f.endswith("state.pt")]
    assert len(ckpts) == 1, f"expected the epoch-1 checkpoint in the bucket, found {ckpts}"

    summary = _run_job("train", *args)
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    # epoch 1 is run 1's, read back from the bucket's checkpoint; only epoch 2 trained again
    assert [h["attempt"] for h in summary["history"]] == [0, 1], "the rerun started over instead of resuming"
    assert summary["history"][1]["setup_s"] >= 0 and summary["out"] == storage.join(runs, "e2e")
    assert storage.exists(storage.join(summary["best_model"], "model.safetensors"))
    for name in ("summary.json", "config.resolved.json", "metrics.jsonl", "curves.png"):
        assert storage.exists(storage.join(summary["out"], name)), name
    text = storage.read_bytes(storage.join(summary["out"], "config.resolved.json")).decode()
    assert s3.secret_key not in text and s3.access_key not in text
    e2e["model"] = summary["best_model"]


def _bucket_model(e2e):
    """The trained model when the train test ran, else a fresh model saved to the bucket."""
    if "model" in e2e:
        return e2e["model"]
    from dae.checkpoint import save_model
    from dae.models import create_model

    return save_model(create_model("keras_blog", channels=1), storage.join(e2e["root"], "fresh_model"),
                      noise="gaussian:0.5")


def test_evaluate_job_from_bucket(e2e, s3):
    out = storage.join(e2e["root"], "eval")
    _run_job("evaluate", "--data", e2e["data"], "--split", "test", "--noise", "gaussian:0.3",
             "--models", _bucket_model(e2e), "--baselines", "median", "--limit", 16, "--tune-images", 4,
             "--picture-images", 4, "--out", out)
    report = storage.read_json(storage.join(out, "report.json"))
    text = json.dumps(report)
    assert s3.secret_key not in text and s3.access_key not in text
    for name in ("report.md", "per_image.parquet", "comparison.png", "config.resolved.json"):
        assert storage.exists(storage.join(out, name)), name


@pytest.mark.slow
def test_denoise_job_bucket_to_bucket_resumes_exactly_once(e2e, s3):
    import pyarrow.parquet as pq

    from dae.denoise import read_outputs

    out = storage.join(e2e["root"], "denoised")
    args = ["--input", e2e["data"], "--split", "test", "--model", _bucket_model(e2e), "--output", out,
            "--add-noise", "gaussian:0.3", "--batch-size", 16, "--max-actors", 1, "--samples", 4]
    s1 = _run_job("denoise", *args)
    assert (s1["files"], s1["files_processed"], s1["rows_out"], s1["rows_failed"]) == (2, 2, 64, 0)
    markers = storage.list_files(storage.join(out, "_done"), ".json")
    assert len(markers) == 2

    def raw_ids():
        ids = []
        for f in storage.list_files(storage.join(out, "data"), ".parquet", recursive=True):
            fs, inner = storage.resolve(f)
            ids += pq.read_table(inner, filesystem=fs, columns=["id"]).column("id").to_pylist()
        return sorted(ids)

    first = read_outputs(out)
    assert first.num_rows == 64 and len(set(first.column("id").to_pylist())) == 64
    assert raw_ids() == sorted(first.column("id").to_pylist())  # workers wrote parts into the bucket

    # As after a crash between one input's parts and its marker: the rerun skips the input whose
    # marker is in the bucket, deletes the other's parts and redoes it; the rows come out the same.
    stem = markers[0].rsplit("/", 1)[1][:-len(".json")]
    old_parts = storage.list_files(storage.join(out, "data", stem), ".parquet")
    storage.delete(markers[0])
    assert read_outputs(out).num_rows == 32
    s2 = _run_job("denoise", *args)
    assert (s2["files_processed"], s2["files_skipped"], s2["rows_out"], s2["rows_failed"]) == (1, 1, 64, 0)
    assert storage.exists(markers[0]) and not any(storage.exists(p) for p in old_parts)
    assert read_outputs(out).equals(first)  # deterministic, every id exactly once
    assert raw_ids() == sorted(first.column("id").to_pylist())
    for name in ("summary.json", "config.resolved.json"):
        text = storage.read_bytes(storage.join(out, name)).decode()
        assert s3.secret_key not in text and s3.access_key not in text


@pytest.mark.slow
def test_denoise_reruns_in_a_bucket_mirror_the_input_and_take_one_writer(e2e, s3):
    """The rerun rules on S3: an input object renamed (copy + delete) is retired and its new name
    done, other settings are refused, a live lease refuses a second writer, and every id is once."""
    import time

    import pyarrow.parquet as pq

    from dae.denoise import lease, read_outputs

    fs, _ = storage.resolve(e2e["data"])
    src = storage.join(e2e["root"], "rerun-in")
    for f in storage.list_files(storage.join(e2e["data"], "test"), ".parquet"):
        fs.copy_file(storage.resolve(f)[1], storage.resolve(storage.join(src, f.rsplit("/", 1)[1]))[1])
    out = storage.join(e2e["root"], "rerun-out")
    args = ["--input", src, "--model", _bucket_model(e2e), "--output", out, "--max-actors", 1, "--samples", 0]
    assert _run_job("denoise", *args)["rows_out"] == 64

    def committed_ids():
        got = read_outputs(out).column("id").to_pylist()
        raw = [i for f in storage.list_files(storage.join(out, "data"), ".parquet", recursive=True)
               for i in pq.read_table(storage.resolve(f)[1], filesystem=fs, columns=["id"]).column("id").to_pylist()]
        assert sorted(got) == sorted(raw) and len(got) == len(set(got))
        return sorted(got)

    first = committed_ids()
    old, new = storage.join(src, "part-00001.parquet"), storage.join(src, "moved.parquet")
    fs.copy_file(storage.resolve(old)[1], storage.resolve(new)[1])
    storage.delete(old)
    s = _run_job("denoise", *args)
    assert (s["inputs"]["retired"], s["inputs"]["new"], s["inputs"]["unchanged"]) == (1, 1, 1)
    assert committed_ids() == first  # the same 64 ids, once, not 96
    with pytest.raises(ValueError, match=r"different run \(sigma: -1.0 -> 25.0\)"):
        _run_job("denoise", *args, "--sigma", 25)
    now = time.time()
    storage.write_json(lease.path(out), {"run_id": "elsewhere-1", "host": "node-7", "pid": 1, "started_at": now,
                                         "heartbeat": now, "expires": now + 60})
    with pytest.raises(lease.LeaseHeld, match="being written by run elsewhere-1 \\(host node-7"):
        _run_job("denoise", *args)
    storage.delete(lease.path(out))
    assert _run_job("denoise", *args)["files_processed"] == 0 and not storage.exists(lease.path(out))


@pytest.mark.parametrize("job", ["prepare", "train", "denoise", "evaluate"])
def test_job_fails_fast_on_missing_bucket(job, e2e, s3):
    """Each job checks its storage before any work and names the missing bucket."""
    missing = "s3://no-such-bucket-dae/x"
    argv = {
        "prepare": ["--source", "mnist5k", "--limit", 8, "--out", missing],
        "train": ["--data", e2e["data"], "--epochs", 1, "--storage", missing, "--run-name", "nb"],
        "denoise": ["--input", e2e["data"], "--split", "test", "--model", _bucket_model(e2e), "--output", missing],
        "evaluate": ["--data", e2e["data"], "--models", _bucket_model(e2e), "--baselines", "median",
                     "--limit", 4, "--out", missing],
    }[job]
    t0 = time.perf_counter()
    missing_bucket = f"bucket 'no-such-bucket-dae' does not exist at endpoint {s3.endpoint}"
    with pytest.raises(storage.StorageError, match=missing_bucket):
        _run_job(job, *argv)
    assert time.perf_counter() - t0 < 30
