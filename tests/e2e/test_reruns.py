"""Reruns a user makes, end to end on real Ray and real Parquet: inputs renamed, replaced, grown and
removed between runs, other settings or splits into the same output, lost folders, hidden folders,
exports, two writers, and kills at every step of the commit, retire and overwrite paths
(tests/killpoint.py). After each: every id exactly once, through read_outputs and a plain reader.
The pieces without Ray are in tests/unit/test_reruns.py."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from dae import inference, precision, shards
from dae.denoise import lease as lease_mod, read_outputs
from helpers import REPO, fashion, job_env, run_job

pytestmark = pytest.mark.ray


def run(*argv):
    return run_job("denoise", *argv)


def ids(out) -> list[str]:
    """The committed ids through the documented reader (each at most once, or the test fails)."""
    got = read_outputs(str(out)).column("id").to_pylist() + read_outputs(str(out), "errors").column("id").to_pylist()
    assert len(got) == len(set(got)), "an id twice in the committed view"
    return sorted(got)


def raw_ids(out) -> list[str]:
    """Every id in every Parquet file under OUT/data and OUT/errors: what a plain reader sees."""
    files = glob.glob(os.path.join(out, "data", "**", "*.parquet"), recursive=True) + \
        glob.glob(os.path.join(out, "errors", "**", "*.parquet"), recursive=True)
    return sorted(i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist())


def input_ids(root) -> list[str]:
    return sorted(r["id"] for r in shards.iter_rows(sorted(glob.glob(os.path.join(root, "**", "*.parquet"),
                                                                      recursive=True)), columns=["id"]))


def exactly_once(out, root):
    want = input_ids(root)
    assert ids(out) == want
    assert raw_ids(out) == want


def make_input(tiny_shards, root, n=24, per_file=8, prefix="r", offset=0):
    f = fashion(offset + n)
    rows = [(f"{prefix}/{offset + i:04d}", f[offset + i], i % 10) for i in range(n)]
    return tiny_shards(rows={"test": rows}, root=root, rows_per_shard=per_file)


# ---------------------------------------------------------------- inputs that come and go


def test_renamed_input_is_retired_and_kept_only_on_request(ray_session, tmp_path, fashion_model_dir, tiny_shards):
    src = make_input(tiny_shards, tmp_path / "in")
    out = tmp_path / "out"
    argv = ["--input", src, "--model", fashion_model_dir, "--output", out]
    run(*argv)
    os.rename(os.path.join(src, "test", "part-00001.parquet"), os.path.join(src, "test", "renamed.parquet"))
    s = run(*argv)
    exactly_once(out, src)  # 24 rows for 24 ids, not 32
    assert s["inputs"]["retired"] == 1 and s["inputs"]["new"] == 1 and s["inputs"]["unchanged"] == 2
    assert s["rows_out"] == 24
    assert not (out / "_done" / "test__part-00001.json").exists()
    # kept on request: the kept rows' ids count in the duplicate check, so renaming back is refused
    os.rename(os.path.join(src, "test", "renamed.parquet"), os.path.join(src, "test", "part-00001.parquet"))
    with pytest.raises(ValueError, match=r"8 id\(s\) occur more than once.*\(kept output of a removed input\)"):
        run(*argv, "--keep-removed")
    assert len(ids(out)) == 24  # refused before any change: still the 24 rows once
    assert run(*argv)["inputs"]["retired"] == 1
    # a removed input kept: its rows stay
    os.remove(os.path.join(src, "test", "part-00002.parquet"))
    s = run(*argv, "--keep-removed")
    assert s["inputs"]["kept_removed"] == 1 and s["rows_out"] == 24 and len(ids(out)) == 24
    # and then retired by a run without the flag
    s = run(*argv)
    assert s["inputs"]["retired"] == 1 and s["rows_out"] == 16
    exactly_once(out, src)


def test_replaced_shard_with_the_same_name_and_rows_is_redone(ray_session, tmp_path, fashion_model_dir, tiny_shards):
    src = make_input(tiny_shards, tmp_path / "in")
    out = tmp_path / "out"
    argv = ["--input", src, "--model", fashion_model_dir, "--output", out]
    run(*argv)
    other = make_input(tiny_shards, tmp_path / "other", prefix="new", offset=100)
    shutil.copyfile(os.path.join(other, "test", "part-00000.parquet"), os.path.join(src, "test", "part-00000.parquet"))
    s = run(*argv)
    exactly_once(out, src)  # the new file's ids, not the old ones'
    assert (s["inputs"]["redone"], s["inputs"]["unchanged"], s["files_processed"]) == (1, 2, 1)
    # a rerun over unchanged inputs reads no image and changes nothing
    before = {p: os.path.getmtime(p) for p in glob.glob(str(out / "data" / "**"), recursive=True)}
    s = run(*argv)
    assert s["files_processed"] == 0 and s["inputs"]["unchanged"] == 3
    # the run's resolved config given back is the same run: accepted, nothing to do
    s = run("--config", out / "config.resolved.json")
    assert s["files_processed"] == 0 and s["inputs"]["unchanged"] == 3
    assert before == {p: os.path.getmtime(p) for p in glob.glob(str(out / "data" / "**"), recursive=True)}


def test_other_split_or_settings_into_an_output_are_refused(ray_session, tmp_path, fashion_model_dir, tiny_shards):
    f = fashion(20)
    src = tiny_shards(rows={"test": [(f"t/{i}", f[i], 0) for i in range(10)],
                            "train": [(f"tr/{i}", f[10 + i], 0) for i in range(10)]}, root=tmp_path / "in")
    out = tmp_path / "out"
    base = ["--input", src, "--model", fashion_model_dir, "--output", out]
    run(*base, "--split", "test")
    with pytest.raises(ValueError, match=r"different run \(split: 'test' -> 'train'\)"):
        run(*base, "--split", "train")
    # the precision changes pixels: another one is another run (auto is recorded as what it resolved to)
    was = precision.resolve("auto", "cpu")
    other = "fp32" if was == "bf16" else "bf16"
    with pytest.raises(ValueError, match=rf"different run \(precision: '{was}' -> '{other}'\)"):
        run(*base, "--split", "test", "--precision", other)
    assert run(*base, "--split", "test", "--precision", was)["files_processed"] == 0  # auto == what it was
    # settings: refused whichever input files the run covers
    other = tiny_shards(rows={"test": [(f"o/{i}", f[i], 0) for i in range(4)]}, root=tmp_path / "other")
    sig = tmp_path / "sig"
    run("--input", src, "--split", "test", "--model", fashion_model_dir, "--output", sig, "--sigma", 10)
    with pytest.raises(ValueError, match=r"different run \(input: .*; sigma: 10.0 -> 50.0\).*--overwrite"):
        run("--input", other, "--split", "test", "--model", fashion_model_dir, "--output", sig, "--sigma", 50)
    s = run("--input", other, "--split", "test", "--model", fashion_model_dir, "--output", sig, "--sigma", 50,
            "--overwrite")
    assert s["rows_out"] == 4 and ids(sig) == sorted(f"o/{i}" for i in range(4))
    assert raw_ids(sig) == ids(sig)


def test_lost_data_folder_is_redone(ray_session, tmp_path, fashion_model_dir, tiny_shards):
    src = make_input(tiny_shards, tmp_path / "in")
    out = tmp_path / "out"
    argv = ["--input", src, "--model", fashion_model_dir, "--output", out]
    run(*argv)
    shutil.rmtree(out / "data")
    s = run(*argv)
    exactly_once(out, src)
    assert s["inputs"]["broken"] == 3 and s["files_processed"] == 3


def test_hidden_folders_are_skipped_whole_and_said(ray_session, tmp_path, fashion_model_dir, tiny_shards):
    root = tmp_path / "in"
    make_input(tiny_shards, root / "a", n=8)
    make_input(tiny_shards, root / "_old", n=8, prefix="old", offset=50)
    out = tmp_path / "out"
    argv = ["--input", root, "--model", fashion_model_dir, "--output", out]
    s = run(*argv)
    assert s["files"] == 1 and ids(out) == input_ids(root / "a") == raw_ids(out)
    assert run(*argv)["files_processed"] == 0  # every rerun: nothing to redo
    assert s["listing"]["skipped"]["hidden: a name in its path starts with '.' or '_'"]["files"] == 1


def test_export_follows_recomputed_and_retired_inputs(ray_session, tmp_path, fashion_model_dir, tiny_shards):
    src = tmp_path / "in"
    make_input(tiny_shards, src / "a", n=8, per_file=16)
    make_input(tiny_shards, src / "b", n=8, prefix="b", offset=30)
    out, export = tmp_path / "out", tmp_path / "png"
    argv = ["--input", src, "--model", fashion_model_dir, "--output", out, "--export-png", export]

    def names(root):
        return sorted(inference.export_name(i) for i in input_ids(root))

    assert run(*argv)["exported_png"] == 16
    shutil.rmtree(src / "a")
    make_input(tiny_shards, src / "a", n=12, per_file=16)  # the same file grew from 8 to 12 rows
    s = run(*argv)
    assert sorted(os.listdir(export)) == names(src)
    assert s["inputs"]["redone"] == 1 and s["exported_png"] == 12
    shutil.rmtree(src / "b")  # removed: its images go with its rows
    s = run(*argv)
    assert sorted(os.listdir(export)) == names(src) and s["inputs"]["retired"] == 1
    exactly_once(out, src)


# ---------------------------------------------------------------- inputs are never outputs, one writer


def test_output_inside_the_input_or_an_unfinished_prepare_is_refused(ray_session, tmp_path, fashion_model_dir,
                                                                    tiny_shards):
    src = make_input(tiny_shards, tmp_path / "in", n=8)
    with pytest.raises(ValueError, match=r"--output .*in/out lies inside the --input .*in: the next run would read"):
        run("--input", src, "--model", fashion_model_dir, "--output", tmp_path / "in" / "out")
    assert not (tmp_path / "in" / "out").exists()
    (tmp_path / "in" / shards.PREPARE_STARTED).write_text('{"started_at": "2026-12-06T00:00:00Z"}')
    with pytest.raises(ValueError, match="prepare did not finish"):
        run("--input", src, "--split", "test", "--model", fashion_model_dir, "--output", tmp_path / "out")


def test_a_second_writer_is_refused_and_a_dead_ones_lease_taken(ray_session, tmp_path, fashion_model_dir, tiny_shards):
    src = make_input(tiny_shards, tmp_path / "in", n=8)
    out = tmp_path / "out"
    argv = ["--input", src, "--model", fashion_model_dir, "--output", out]
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        now = time.time()
        os.makedirs(out)
        lease_mod.storage.write_json(lease_mod.path(str(out)), {
            "run_id": "nightly-1", "host": os.uname().nodename, "pid": holder.pid, "started_at": now,
            "heartbeat": now, "expires": now + 60})
        with pytest.raises(lease_mod.LeaseHeld, match=r"is being written by run nightly-1 .*pid "
                                                      rf"{holder.pid}"):
            run(*argv)
        assert not (out / "_done").exists()
    finally:
        holder.kill()
        holder.wait()
    s = run(*argv)  # the holder died: its lease is taken over at once on the same host
    assert s["rows_out"] == 8 and not (out / lease_mod.NAME).exists()


# ---------------------------------------------------------------- kills at every step


KILL_STEPS = [
    ("commit:before-marker", False), ("commit:after-marker", False), ("retire:before-marker", False),
    ("retire:after-marker", False), ("export:before-marker-delete", False), ("retire:after-export", False),
    ("garbage:part", False), ("overwrite:after-manifest", True), ("garbage:marker", True),
]


@pytest.fixture(scope="module")
def committed(ray_session, tmp_path_factory, fashion_model_dir, tiny_shards):
    """A committed output with exported images, made once; each kill test gets a copy at the same
    paths (marker identities hold times and sizes, the manifest the input path: copy2 keeps them)."""
    base = tmp_path_factory.mktemp("kills")
    work, template = base / "work", base / "template"
    src = work / "in"
    for k, name in enumerate("abcd"):
        make_input(tiny_shards, src / name, n=6, per_file=6, prefix=name, offset=10 * k)
    argv = ["--input", src, "--model", fashion_model_dir, "--output", work / "out", "--export-png", work / "png"]
    run(*argv)
    shutil.copytree(work, template)

    def fresh():
        shutil.rmtree(work)
        shutil.copytree(template, work)
        return work, argv

    return fresh


@pytest.mark.slow
@pytest.mark.parametrize("step,overwrite", KILL_STEPS, ids=[s for s, _ in KILL_STEPS])
def test_a_kill_at_any_step_leaves_a_committed_view_and_the_rerun_ends_exactly_once(
        ray_session, committed, tiny_shards, step, overwrite):
    import ray

    work, argv = committed()
    src, out, export = work / "in", work / "out", work / "png"
    # what a rerun meets: a removed input (retire), a changed one (commit replacing a marker), a new
    # one, and an orphan part a killed attempt left (garbage)
    shutil.rmtree(src / "c")
    shutil.rmtree(src / "b")
    make_input(tiny_shards, src / "b", n=9, per_file=9, prefix="b2", offset=60)
    make_input(tiny_shards, src / "e", n=6, per_file=6, prefix="e", offset=80)
    part = next((out / "data" / "a__test__part-00000").iterdir())
    shutil.copyfile(part, part.with_name("part-orphan.parquet"))
    env = {**job_env(), "RAY_ADDRESS": ray.get_runtime_context().gcs_address}  # join this session's Ray
    p = subprocess.run([sys.executable, os.path.join(REPO, "tests", "killpoint.py"), step, "denoise",
                        *map(str, argv), *(["--overwrite"] if overwrite else [])],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 77, f"the step was not reached: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    ids(out)  # the committed view after the kill reads, each id at most once
    s = run(*argv)
    exactly_once(out, src)
    assert s["rows_out"] == 6 + 9 + 6 + 6
    assert sorted(os.listdir(export)) == sorted(inference.export_name(i) for i in input_ids(src))
