"""A folder of photos in, photos out (issue 29, item 2), end to end on real Ray: mixed formats in nested
folders with pretrained:auto and --export, a corrupt file in errors/, a stranger's file left alone, and
reruns that do nothing. The pieces without Ray are in tests/unit/test_denoise_files.py."""

from __future__ import annotations

import glob
import io
import os
import uuid

import numpy as np
import pytest
import ray  # noqa: F401  (imported here: Ray's log handlers must not bind to a test's capsys stream)
import tifffile
from PIL import Image

from dae import shards, storage
from dae.denoise import read_outputs
from helpers import run_job

pytestmark = pytest.mark.ray


def run(*argv):
    return run_job("denoise", *argv)


def _photos(root) -> dict[str, tuple]:
    """Seven files: {relative path: (shape the model sees, dtype)} for the six images, None for the corrupt one."""
    rng = np.random.default_rng(5)
    smooth = np.linspace(40, 200, 24 * 32).reshape(24, 32)

    def save(rel, a, **kw):
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        Image.fromarray(a).save(p, **kw)

    noisy = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255)
    save("gray.png", noisy.astype(np.uint8))
    exif = Image.Exif()
    exif[274] = 6  # stored 24x32, shown (and denoised) upright as 32x24
    save("trip/rot.jpg", np.stack([noisy] * 3, axis=2).astype(np.uint8), exif=exif.tobytes(), quality=95)
    save("trip/raw/deep16.tif", (noisy * 257).astype(np.uint16))
    tifffile.imwrite(os.path.join(root, "rgb16.tif"), (np.stack([noisy] * 3, axis=2) * 257).astype(np.uint16),
                     photometric="rgb")  # 16-bit RGB: Pillow would read it as 8-bit
    save("trip/c.bmp", rng.integers(0, 256, (16, 20, 3), dtype=np.uint8))
    save("w.webp", rng.integers(0, 256, (16, 18, 3), dtype=np.uint8), lossless=True)
    with open(os.path.join(root, "trip", "broken.jpg"), "wb") as fh:
        fh.write(b"\xff\xd8\xff\xe0 a JPEG that stops here")
    return {"gray.png": ((24, 32, 1), np.uint8), "trip/rot.jpg": ((32, 24, 3), np.uint8),
            "trip/raw/deep16.tif": ((24, 32, 1), np.uint16), "trip/c.bmp": ((16, 20, 3), np.uint8),
            "w.webp": ((16, 18, 3), np.uint8), "rgb16.tif": ((24, 32, 3), np.uint16), "trip/broken.jpg": None}


def test_a_folder_of_photos_in_and_out(ray_session, tmp_path):
    src, out, exp = tmp_path / "photos", tmp_path / "out", tmp_path / "exp"
    want = _photos(src)
    os.makedirs(exp / "trip")
    (exp / "trip" / "c.png").write_bytes(b"a file someone else put here")
    argv = ["--input", src, "--model", "pretrained:auto", "--output", out, "--export", exp, "--sigma", 25,
            "--max-error-fraction", 0.5]
    # the outputs are complete; the one export that would replace a stranger's file is refused, named
    with pytest.raises(RuntimeError, match=r"--export: 1 image\(s\) not written; first: .*trip/c.png exists"):
        run(*argv)
    assert (exp / "trip" / "c.png").read_bytes() == b"a file someone else put here"
    rows = {r["id"]: r for r in read_outputs(str(out)).to_pylist()}
    assert set(rows) == {k for k, v in want.items() if v}
    for rid, (shape, dtype) in ((k, v) for k, v in want.items() if v):
        r = rows[rid]
        assert r["input"] == rid  # an image file's row names its file
        image, den = shards.decode_png(r["image"]), shards.decode_png(r["denoised"])
        assert image.shape == den.shape == shape and den.dtype == dtype, rid  # upright; 16-bit kept
        assert (r["height"], r["width"], r["channels"]) == shape
    (err,) = read_outputs(str(out), "errors").to_pylist()
    assert (err["id"], err["input"], err["stage"]) == ("trip/broken.jpg", "trip/broken.jpg", "decode")
    assert "undecodable image" in err["reason"]
    # the stranger's file gone, the next run exports what was refused, and recomputes nothing
    os.remove(exp / "trip" / "c.png")
    s = run(*argv)
    assert s["files_processed"] == 0 and s["listing"]["kind"] == "files" and s["export"]["refused"] == 0
    exported = sorted(os.path.relpath(p, exp) for p in glob.glob(str(exp / "**" / "*"), recursive=True)
                      if os.path.isfile(p))
    assert exported == sorted(["gray.png", "trip/rot.png", "trip/raw/deep16.png", "trip/c.png", "w.png", "rgb16.png"])
    for rid in rows:
        name = os.path.splitext(rid)[0] + ".png"
        assert (exp / name).read_bytes() == rows[rid]["denoised"], rid  # the denoised PNG, 16-bit included
    assert not [p for p in glob.glob(str(tmp_path / "**" / "*.tmp-*"), recursive=True)]
    # a rerun of a complete output does nothing and changes nothing
    before = {p: os.path.getmtime(p) for p in glob.glob(str(tmp_path / "**"), recursive=True)
              if os.path.isfile(p) and not p.endswith(("summary.json", "config.resolved.json", "samples.png"))}
    s = run(*argv)
    assert s["files_processed"] == 0 and s["export"]["groups"] == 0 and s["rows_in"] == 7
    assert before == {p: os.path.getmtime(p) for p in before}
    # the output and the export mirror the folder: a photo removed, one added
    os.remove(src / "w.webp")
    Image.fromarray(np.full((9, 10), 77, np.uint8)).save(src / "trip" / "new.png")
    s = run(*argv)
    assert s["rows_in"] == 7 and s["export"]["refused"] == 0
    ids = sorted(read_outputs(str(out)).column("id").to_pylist())
    assert ids == sorted(["gray.png", "trip/rot.jpg", "trip/raw/deep16.tif", "trip/c.bmp", "trip/new.png", "rgb16.tif"])
    exported = sorted(os.path.relpath(p, exp) for p in glob.glob(str(exp / "**" / "*"), recursive=True)
                      if os.path.isfile(p))
    assert exported == sorted(["gray.png", "trip/rot.png", "trip/raw/deep16.png", "trip/c.png", "trip/new.png",
                               "rgb16.png"])


def test_photos_that_all_mismatch_the_model_fail_before_any_work(ray_session, tmp_path):
    src = tmp_path / "photos"
    _photos(src)
    out = tmp_path / "out"
    # a glob of the RGB photos and the gray model: the error names the model that fits
    with pytest.raises(ValueError, match=r"expects 1-channel images but 2 of 2 sampled input images do not; "
                                         r"3-channel images with a 1-channel model: use --model "
                                         r"pretrained:color-blind \(or pretrained:auto"):
        run("--input", src / "trip" / "*", "--model", "pretrained:gray-blind", "--output", out)
    assert not out.exists()


def test_an_s3_prefix_of_photos_in_and_out(ray_session, s3_server):
    """The same from and to object storage: the listing is one LIST, the workers read the objects,
    the export is one PUT per image (the server is the session's SeaweedFS, tests/s3server.py)."""
    s3_server.create_bucket("dae-files")
    base = f"s3://dae-files/t-{uuid.uuid4().hex[:8]}"
    with s3_server.env():
        for rel, a in (("a/g.png", np.full((12, 14), 90, np.uint8)), ("b.jpg", np.full((10, 8, 3), 120, np.uint8))):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG" if rel.endswith(".png") else "JPEG")
            storage.write_bytes(f"{base}/photos/{rel}", buf.getvalue())
        storage.write_bytes(f"{base}/photos/a/bad.png", b"no image")
        argv = ["--input", f"{base}/photos/", "--model", "pretrained:auto", "--output", f"{base}/out",
                "--export", f"{base}/exp", "--export-format", "same", "--max-error-fraction", 0.5, "--sigma", 25]
        s = run(*argv)
        assert (s["rows_in"], s["rows_out"], s["rows_failed"], s["export"]["written"]) == (3, 2, 1, 2)
        assert sorted(read_outputs(f"{base}/out").column("id").to_pylist()) == ["a/g.png", "b.jpg"]
        assert Image.open(io.BytesIO(storage.read_bytes(f"{base}/exp/b.jpg"))).format == "JPEG"
        assert shards.decode_png(storage.read_bytes(f"{base}/exp/a/g.png")).shape == (12, 14, 1)
        assert run(*argv)["files_processed"] == 0

