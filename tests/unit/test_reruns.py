"""The rerun rules' pieces without Ray: which files are inputs, the manifest's refusal, the commit's
order, the lease, fsync before rename. The whole job over reruns is in tests/e2e/test_reruns.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from dae import storage
from dae.denoise import commits, lease as lease_mod, manifest, outputs
from dae.denoise.scan import SKIP_HIDDEN, SKIP_NOT_PARQUET, list_inputs


def _rows(prefix: str, n: int):
    rng = np.random.default_rng(0)
    return [(f"{prefix}/{i}", rng.integers(0, 256, (8, 8), dtype=np.uint8), 0) for i in range(n)]


# ---------------------------------------------------------------- which files are inputs


def test_hidden_folders_and_other_files_are_skipped_whole_and_said(tmp_path, tiny_shards):
    root = tmp_path / "in"
    tiny_shards(rows={"test": _rows("a", 3)}, root=root / "a")
    tiny_shards(rows={"test": _rows("b", 3)}, root=root / "_staging")
    tiny_shards(rows={"test": _rows("c", 3)}, root=root / "x" / ".hidden")
    (root / "a" / "notes.txt").write_text("not an input")
    listing = list_inputs(str(root))
    assert [f.rel for f in listing.files] == ["a/test/part-00000.parquet"]
    assert listing.skipped == {SKIP_HIDDEN: ["_staging/test/part-00000.parquet", "x/.hidden/test/part-00000.parquet"],
                               SKIP_NOT_PARQUET: ["a/notes.txt"]}
    assert listing.describe()["found"] == 4 and listing.describe()["inputs"] == 1
    f = listing.files[0]
    assert f.size == os.path.getsize(root / "a/test/part-00000.parquet") and f.mtime_ns > 0
    with pytest.raises(FileNotFoundError, match=r"no .parquet shards under .*1 skipped \(hidden"):
        list_inputs(str(root / "x"))
    assert len(list_inputs(str(root / "_staging")).files) == 1  # named as the input itself: read


def test_locations_overlap_on_whole_components(tmp_path):
    assert storage.relation("s3://b/data/out", "s3://b/data") == "lies inside"
    assert storage.relation("s3://b/data/", "s3://b/data") == "is"
    assert storage.relation("s3://b/data", "s3://b/data/out") == "contains"
    assert storage.relation("s3://b/data", "s3://b/data2") is None and storage.relation("s3://b/x", "s3://c/x") is None
    (tmp_path / "in").mkdir()
    os.symlink(tmp_path / "in", tmp_path / "link")
    assert storage.relation(str(tmp_path / "link" / "out"), str(tmp_path / "in")) == "lies inside"
    assert storage.relation(str(tmp_path / "in2"), str(tmp_path / "in")) is None


# ---------------------------------------------------------------- manifest


def test_different_settings_are_refused_naming_every_field(tmp_path):
    s = {"input": "/d", "split": "test", "sigma": 10.0, "model": {"model": "cunet", "channels": 1}, "seed": 0}
    m = manifest.new(str(tmp_path), s)
    manifest.check(str(tmp_path), manifest.read(str(tmp_path)), dict(s))  # the same: accepted
    other = {**s, "split": "train", "sigma": 50.0, "model": {"model": "cunet", "channels": 3}}
    with pytest.raises(ValueError, match=r"different run \(model.channels: 1 -> 3; sigma: 10.0 -> 50.0; "
                                         r"split: 'test' -> 'train'\); use a new --output, or pass --overwrite"):
        manifest.check(str(tmp_path), m, other)


# ---------------------------------------------------------------- commit order


def _part(out, stem, name):
    p = os.path.join(out, "data", stem, name)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    open(p, "wb").write(b"x")
    return f"data/{stem}/{name}"


def test_commit_writes_the_marker_before_deleting_the_old_parts(tmp_path, monkeypatch):
    out = str(tmp_path)
    old = _part(out, "s", "part-old.parquet")
    storage.write_json(outputs.marker_path(out, "s"), {"input": "s.parquet", "data": [old], "errors": [],
                                                      "generation": "g"})
    new = _part(out, "s", "part-new.parquet")
    seen = {}

    def hook(step):
        if step == "commit:after-marker":  # the new marker is in place and the old part still there
            seen["marker"] = storage.read_json(outputs.marker_path(out, "s"))["data"]
            seen["old_exists"] = os.path.exists(os.path.join(out, old))

    monkeypatch.setattr(commits, "STEP_HOOK", hook)
    p = outputs.Pending(rows_in=1, rows_ok=1, data=[new])
    commits.commit(out, "s", "s.parquet", p, "fp", "g", {"size": 1, "mtime_ns": 1, "rows": 1})
    assert seen == {"marker": [new], "old_exists": True}
    assert sorted(os.listdir(os.path.join(out, "data", "s"))) == ["part-new.parquet"]


def test_commit_refuses_to_list_a_part_that_is_not_there(tmp_path):
    out = str(tmp_path)
    p = outputs.Pending(rows_in=1, rows_ok=1, data=["data/s/part-gone.parquet"])
    with pytest.raises(RuntimeError, match=r"s.parquet: 1 part\(s\) reported written are missing"):
        commits.commit(out, "s", "s.parquet", p, "fp", "g", {})
    assert not os.path.exists(outputs.marker_path(out, "s"))


def test_markers_of_inputs_under_underscore_names_are_read(tmp_path):
    out = str(tmp_path)
    storage.write_json(os.path.join(out, "_done", "_x__part.json"), {"input": "_x/part.parquet", "data": []})
    assert commits.marker_stems(out) == ["_x__part"]


def test_local_writes_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    storage.write_bytes(str(tmp_path / "f"), b"data")
    assert calls == ["fsync", "replace", "fsync"]  # the file, the rename, then its folder


# ---------------------------------------------------------------- the lease


def _write_lease(out, **fields):
    now = time.time()
    body = {"run_id": "other", "host": socket.gethostname(), "pid": os.getpid(), "started_at": now,
            "heartbeat": now, "expires": now + 60, **fields}
    storage.write_json(lease_mod.path(out), body)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    out = str(tmp_path)
    with lease_mod.Lease(out, run_id="first"):
        held = json.load(open(lease_mod.path(out)))
        assert held["run_id"] == "first" and held["pid"] == os.getpid()
        with pytest.raises(lease_mod.LeaseHeld, match=rf"is being written by run first \(host "
                                                     rf"{socket.gethostname()}, pid {os.getpid()}, started"):
            lease_mod.Lease(out, run_id="second").acquire()
    assert not os.path.exists(lease_mod.path(out))  # released


def test_a_dead_or_expired_holder_is_taken_over_a_live_one_is_not(tmp_path):
    out = str(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lease(out, pid=dead.pid)  # a killed run on this host: no need to wait for expiry
    with lease_mod.Lease(out, run_id="mine"):
        assert json.load(open(lease_mod.path(out)))["run_id"] == "mine"
    _write_lease(out, host="elsewhere", pid=1, expires=time.time() - 1)  # expired on another node
    with lease_mod.Lease(out, run_id="mine"):
        pass
    _write_lease(out, host="elsewhere", pid=1)  # live on another node
    with pytest.raises(lease_mod.LeaseHeld, match="run other .*host elsewhere"):
        lease_mod.Lease(out, run_id="mine").acquire()


def test_a_run_that_lost_its_lease_stops_before_its_next_commit(tmp_path):
    out = str(tmp_path)
    lease = lease_mod.Lease(out, run_id="slow").acquire()
    try:
        _write_lease(out, run_id="taker")  # it expired and another run took it
        lease.renew()
        with pytest.raises(lease_mod.LeaseHeld, match="lost its lease.*another run took the lease: run taker"):
            lease.check()
        with pytest.raises(lease_mod.LeaseHeld):
            commits.commit(out, "s", "s.parquet", outputs.Pending(0), "fp", "g", {}, lease.check)
        assert not os.path.exists(outputs.marker_path(out, "s"))
    finally:
        lease.release()
    assert json.load(open(lease_mod.path(out)))["run_id"] == "taker"  # not ours: left alone
