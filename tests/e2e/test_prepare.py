"""The prepare job with Ray: the folder source decoded by Ray Data tasks (byte-identical to the
in-process run), from a bucket to a bucket, and the demo's whole pipeline. The in-process job is in
tests/unit/test_prepare.py."""

import os

import numpy as np
import pytest
from PIL import Image

from dae import shards
from helpers import file_digests, make_image_folder, needs_mnist5k, rows_of, run_job
from jobs import demo

pytestmark = pytest.mark.ray


def run(*argv):
    return run_job("prepare", *argv)


def test_folder_job_with_ray_data_matches_in_process(tmp_path, ray_session):
    src = tmp_path / "imgs"
    make_image_folder(src)
    for i in range(30):  # enough files for several Ray Data blocks
        os.makedirs(src / "cats", exist_ok=True)
        Image.fromarray(np.full((5, 6, 3), i * 8, np.uint8)).save(src / "cats" / f"c{i:02d}.png")
    (src / "dogs" / "broken.bmp").write_bytes(b"BM" + b"\x01" * 40)
    (src / "cats" / "junk.png").write_bytes(b"junk")  # Pillow's message names an object address
    common = ["--source", "folder", "--input", src, "--labels-from-subdirs", "--rows-per-shard", 7]
    serial = run(*common, "--out", tmp_path / "serial")
    parallel = run(*common, "--out", tmp_path / "ray", "--parallel-min-files", 0, "--files-per-task", 4)
    assert serial["splits"] == parallel["splits"] and parallel["images"] == 37
    assert file_digests(tmp_path / "serial") == file_digests(tmp_path / "ray")  # same names, same bytes
    assert (tmp_path / "ray" / "errors.jsonl").read_text() == (tmp_path / "serial" / "errors.jsonl").read_text()
    errors = (tmp_path / "ray" / "errors.jsonl").read_text()
    assert "broken.bmp" in errors and "junk.png" in errors


def test_demo_end_to_end_small(tmp_path, capsys, ray_session):
    """The demo's whole pipeline (prepare -> train -> denoise) on 64 digits per split, 1 epoch."""
    needs_mnist5k()  # the demo prepares the real digits: a skip saying why where they are missing
    result = demo.main(demo.get_args_parser().parse_args(
        ["--out", str(tmp_path / "d"), "--limit", "64", "--num-images", "5", "--epochs", "2",
         "--model", "conv28k", "--model-kwargs", "{}"]))
    grid = Image.open(result["noisy_grid"])
    assert grid.size[1] > 3 * 28  # three rows of scaled-up digits
    assert len(rows_of(result["data"], "test")) == 64
    d = result["denoise"]
    assert d["rows_in"] == d["rows_out"] == 64 and d["rows_failed"] == 0
    assert (tmp_path / "d" / "run" / "best_model" / "config.json").exists()
    out = capsys.readouterr().out
    assert "noisy_grid.png" in out and "test PSNR" in out


def _folder_in_bucket(tmp_path, s3_server, bucket_name):
    """An image folder made locally and copied to s3://BUCKET/p-XXXX/imgs: (local, its files, the root)."""
    import uuid

    from dae import storage

    local = tmp_path / "imgs"
    expected = make_image_folder(local)
    root = f"s3://{s3_server.create_bucket(bucket_name)}/p-{uuid.uuid4().hex[:8]}"
    with s3_server.env():
        for rel in expected:
            storage.write_bytes(storage.join(root, "imgs", rel), (local / rel).read_bytes())
    return local, expected, root


def test_folder_from_bucket_to_bucket_with_ray(tmp_path, s3_server, ray_session):
    """Folder source reading s3:// with Ray Data tasks (which get the S3 settings through
    dae.storage), shards written to s3:// byte-identical to a local run of the same images."""
    from dae import storage

    local, expected, root = _folder_in_bucket(tmp_path, s3_server, "dae-prepare-test")
    with s3_server.env():
        common = ["--source", "folder", "--labels-from-subdirs", "--name", "imgs", "--rows-per-shard", 3]
        remote = run(*common, "--input", f"{root}/imgs", "--out", f"{root}/out", "--parallel-min-files", 0,
                     "--files-per-task", 2)
        remote_rows = {s: rows_of(f"{root}/out", s) for s in ("train", "test")}
        names = [f.rsplit("/", 1)[1] for f in shards.list_shards(f"{root}/out", "train")]
        assert storage.read_json(f"{root}/out/classes.json")["classes"] == ["birds", "cats", "dogs"]
    run(*common, "--input", local, "--out", tmp_path / "out")
    assert remote["images"] == len(expected) and remote["errors"] == 0
    # Same shard names and rows (PNG bytes included); only the dae.source metadata names the input.
    assert names == [os.path.basename(f) for f in shards.list_shards(str(tmp_path / "out"), "train")]
    assert remote_rows == {s: rows_of(tmp_path / "out", s) for s in ("train", "test")}


def test_bucket_out_apart_from_the_input_and_overwrite_keeps_foreign_objects(tmp_path, s3_server):
    """On a bucket: an --out under the input prefix is refused (prefixes compared on whole key components:
    .../imgs2 is apart from .../imgs), --overwrite leaves a user's object alone, and the markers mark a
    finished root."""
    from dae import storage

    local, expected, root = _folder_in_bucket(tmp_path, s3_server, "dae-prepare-apart")
    with s3_server.env():
        common = ["--source", "folder", "--input", f"{root}/imgs"]
        with pytest.raises(ValueError, match="lies inside the input folder"):
            run(*common, "--out", f"{root}/imgs/out", "--overwrite")
        assert storage.list_files(f"{root}/imgs", recursive=True) == sorted(f"{root}/imgs/{r}" for r in expected)
        run(*common, "--out", f"{root}/imgs2", "--rows-per-shard", 2)
        storage.write_bytes(f"{root}/imgs2/train/notes.txt", b"mine")
        summary = run(*common, "--out", f"{root}/imgs2", "--overwrite")
        assert storage.read_bytes(f"{root}/imgs2/train/notes.txt") == b"mine"
        assert [f.rsplit("/", 1)[1] for f in storage.list_files(f"{root}/imgs2/train")] == ["notes.txt",
                                                                                            "part-00000.parquet"]
        assert storage.read_json(f"{root}/imgs2/_prepared.json")["images"] == summary["images"] == len(expected)
        shards.require_prepared(f"{root}/imgs2")
