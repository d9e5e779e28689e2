"""Image files as denoise input, without Ray: the listing (kinds, relative ids, globs, hidden names, the
one-line error), commit groups, export paths (never outside the folder), EXIF orientation, 16-bit
decode, the workers' read stage, pretrained:auto's prepare, and the channel error's wording. The job
end to end is in tests/e2e/test_denoise_files.py."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from dae import images, inference, shards
from dae.denoise import auto, files
from helpers import HOSTILE


def _save(root, rel, array, fmt=None, **kw):
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    Image.fromarray(array).save(p, format=fmt, **kw)
    return p


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = str(tmp_path / "photos")
    _save(root, "b.png", rng.integers(0, 256, (8, 9), dtype=np.uint8))
    _save(root, "a/x.jpg", rng.integers(0, 256, (6, 7, 3), dtype=np.uint8), quality=95)
    _save(root, "a/deep/y.tif", rng.integers(0, 65536, (5, 4), dtype=np.uint16))
    _save(root, ".hidden/z.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    _save(root, ".thumbnails/t.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    _save(root, "a/_DSC0001.JPG", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))  # a camera's name: an input
    with open(os.path.join(root, "notes.txt"), "w") as fh:
        fh.write("not an image")
    return root


# ---------------------------------------------------------------- the listing


def test_listing_ids_are_relative_paths_and_the_listing_is_arrays(folder):
    lst = files.list_any(folder)
    assert lst.kind == "files" and lst.found == 7
    assert lst.images.rel.to_pylist() == ["a/_DSC0001.JPG", "a/deep/y.tif", "a/x.jpg", "b.png"]  # sorted, '/'-separated
    assert lst.images.size.dtype == np.int64 and lst.images.mtime_ns.dtype == np.int64
    assert lst.images.root == os.path.abspath(folder)
    d = lst.describe()
    assert d["skipped"][files.SKIP_HIDDEN]["files"] == 2
    assert d["skipped"][files.SKIP_NOT_IMAGE]["first"] == ["notes.txt"]
    assert sum(g.rows for g in lst.files) == 4
    # the rows the workers get: the full path, the id, the group's stem
    (block,) = files.file_blocks(lst.images, lst.files, rows=10)
    rows = block.to_pylist()
    assert [r["id"] for r in rows] == ["a/_DSC0001.JPG", "a/deep/y.tif", "a/x.jpg", "b.png"]
    assert rows[1]["path"] == os.path.join(os.path.abspath(folder), "a", "deep", "y.tif")
    assert {r["stem"] for r in rows} == {lst.files[0].stem}


def test_glob_and_single_file_inputs(folder):
    lst = files.list_any(os.path.join(folder, "**", "*.jpg"))
    assert lst.images.rel.to_pylist() == ["a/x.jpg"] and lst.images.root == os.path.abspath(folder)
    lst = files.list_any(os.path.join(folder, "a", "*"))  # one folder level: deep/ is not matched
    assert lst.images.rel.to_pylist() == ["_DSC0001.JPG", "x.jpg"]  # ids: relative to the folder before the *
    lst = files.list_any(os.path.join(folder, "b.png"))
    assert lst.kind == "files" and lst.images.rel.to_pylist() == ["b.png"]
    assert files.split_glob("s3://bucket/photos/*/x?.jpg") == ("s3://bucket/photos", "*/x?.jpg")
    rx = files.glob_regex("**/IMG_[0-9]*.JPG")
    assert rx.match("IMG_1.JPG") and rx.match("a/b/IMG_22.JPG") and not rx.match("a/IMG_x.JPG")


def test_neither_shards_nor_images_is_a_one_line_error(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as e:
        files.list_any(str(tmp_path / "docs"))
    msg = str(e.value)
    assert "\n" not in msg and "no .parquet shards or image files" in msg and "readme.txt" in msg


def test_a_shard_root_stays_shards_even_with_images_beside(tmp_path, tiny_shards):
    root = tiny_shards(n_test=3, root=tmp_path / "shards")
    _save(root, "samples.png", np.zeros((4, 4), np.uint8))
    lst = files.list_any(root)
    assert lst.kind == "shards" and [f.rel for f in lst.files] == ["test/part-00000.parquet"]


def test_groups_are_stable_when_files_come_and_go():
    rels = [f"d{i // 100}/img{i:05d}.png" for i in range(3000)]

    def grouped(names):
        n = len(names)
        lst = files.ImageListing("/r", pa.array(sorted(names)), np.full(n, 100, np.int64), np.zeros(n, np.int64))
        return {g.stem: g.identity for g in files.groups(lst)}

    before = grouped(rels)
    assert 3 <= len(before) <= 40  # about GROUP_FILES files per group
    for changed_files in (rels[:1500] + ["d15/img01500-new.png"] + rels[1500:], rels[:700] + rels[701:]):
        after = grouped(changed_files)
        # content-defined: only the group the file is (or was) in changes (or splits, or merges)
        differ = {st for st in set(before) | set(after) if before.get(st) != after.get(st)}
        assert 1 <= len(differ) <= 2, differ
    starts = files.group_starts(pa.array(rels), every=256, most=50)
    assert np.diff(np.append(starts, 3000)).max() <= 50  # the cap
    # large files come fewer to a group: 4 MiB photos about 64 to 256 MiB
    big = files.group_starts(pa.array(rels), np.full(3000, 4 * 2**20, np.int64))
    assert 25 <= 3000 / len(big) <= 150


# ---------------------------------------------------------------- decoding (the workers' read stage)


def test_exif_orientation_is_applied_and_16_bit_kept():
    a = (np.arange(6 * 4).reshape(6, 4) * 2500).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="TIFF", tiffinfo={274: 6})  # 6: rotate 90 clockwise to view
    got = images.decode_image(buf.getvalue())
    assert got.dtype == np.uint16 and got.shape == (4, 6, 1)
    np.testing.assert_array_equal(got[:, :, 0], np.rot90(a, -1))
    rgb = np.zeros((10, 20, 3), np.uint8)
    exif = Image.Exif()
    exif[274] = 8
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", exif=exif.tobytes())
    assert images.decode_image(buf.getvalue()).shape == (20, 10, 3)
    with pytest.raises(shards.ImageDecodeError, match="undecodable image"):
        images.decode_image(b"GIF89a but not really")
    with pytest.raises(shards.ImageDecodeError, match="empty"):
        images.decode_image(b"")


def test_read_files_batch_keeps_every_row(folder):
    with open(os.path.join(folder, "broken.png"), "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n broken")
    lst = files.list_any(folder)
    (block,) = files.file_blocks(lst.images, lst.files, rows=10)
    batch = {k: block.column(k).to_numpy(zero_copy_only=False) for k in block.column_names}
    batch["path"][1] = batch["path"][1] + ".gone"  # a/deep/y.tif vanished between listing and reading
    out = files.read_files_batch(batch)
    by = dict(zip(out["id"], range(len(out["id"]))))
    gone = by["a/deep/y.tif"]
    assert out["read_stage"][gone] == "read" and "unreadable file" in out["read_error"][gone]
    assert out["read_stage"][by["broken.png"]] == "decode"
    k = by["a/x.jpg"]
    assert (out["height"][k], out["width"][k], out["channels"][k], out["read_error"][k]) == (6, 7, 3, "")
    assert shards.decode_png(out["image"][k]).shape == (6, 7, 3)
    prepared = auto.prepare_rows(out, 0)  # pretrained:auto: every row kept, in order
    assert list(prepared["id"]) == list(out["id"])
    assert prepared[inference.ERROR_STAGE][by["broken.png"]] == "decode"
    assert prepared[inference.INPUT][by["b.png"]].shape == (8, 9, 1)
    assert prepared[inference.INPUT][by["a/x.jpg"]].shape == (6, 7, 3)


def test_16_bit_tiff_stays_16_bit_through_the_read_stage(tmp_path):
    a = np.random.default_rng(2).integers(0, 65536, (5, 7), dtype=np.uint16)
    _save(str(tmp_path), "g16.tif", a)
    lst = files.list_any(str(tmp_path))
    (block,) = files.file_blocks(lst.images, lst.files, rows=4)
    out = files.read_files_batch({k: block.column(k).to_numpy(zero_copy_only=False) for k in block.column_names})
    png = shards.decode_png(out["image"][0])
    assert png.dtype == np.uint16
    np.testing.assert_array_equal(png[:, :, 0], a)
    prepared = auto.prepare_rows(out, 1)
    assert prepared[inference.DEPTH][0] == 16  # the denoised PNG is written with 16 bits


def _tiff16(a: np.ndarray, orientation: int = 1, **kw) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, a, photometric="rgb", extratags=[(274, "H", 1, orientation, True)], **kw)
    return buf.getvalue()


def test_16_bit_rgb_files_stay_16_bit_upright_through_the_read_stage(tmp_path):
    # Pillow opens 16-bit RGB PNGs and TIFFs as 8-bit RGB without a word: these must not go through it.
    import imagecodecs

    a = np.random.default_rng(3).integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    rgba = np.concatenate([a, np.full((5, 7, 1), 65535, np.uint16)], axis=2)
    want = {"rgb16.png": a, "rgba16.png": a, "rgb16-lzw-rot.tif": np.rot90(a, -1), "rgb16-planes.tif": a}
    for rel, data in [("rgb16.png", imagecodecs.png_encode(a)), ("rgba16.png", imagecodecs.png_encode(rgba)),
                      ("rgb16-lzw-rot.tif", _tiff16(a, 6, compression="lzw")),  # 6: rotate 90 clockwise
                      ("rgb16-planes.tif", _tiff16(np.moveaxis(a, -1, 0).copy(), planarconfig="separate"))]:
        (tmp_path / rel).write_bytes(bytes(data))
    lst = files.list_any(str(tmp_path))
    (block,) = files.file_blocks(lst.images, lst.files, rows=8)
    out = files.read_files_batch({k: block.column(k).to_numpy(zero_copy_only=False) for k in block.column_names})
    for rel, png, err in zip(out["id"], out["image"], out["read_error"]):
        assert err == "", rel
        got = shards.decode_png(png)
        assert got.dtype == np.uint16, rel
        np.testing.assert_array_equal(got, want[rel], err_msg=rel)
        assert shards.png_header(png)[2:] == (3, 16)
    prepared = auto.prepare_rows(out, 1)
    assert list(prepared[inference.DEPTH]) == [16] * 4  # the denoised PNGs are written with 16 bits
    big = shards.DEFAULT_MAX_PIXELS
    with pytest.raises(shards.ImageDecodeError, match="decompression bomb"):
        images.decode_image(_tiff16(a), max_pixels=34)
    assert images.decode_image(_tiff16(a), max_pixels=big).shape == (5, 7, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_turns_arrays_as_pillows_exif_transpose(orientation):
    from PIL import ImageOps

    a = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[274] = orientation
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", exif=exif.tobytes())
    assert images.exif_orientation(buf.getvalue()) == orientation
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    np.testing.assert_array_equal(images.orient(a, orientation), want)


def test_merge_rows_restores_the_order():
    parts = [(np.array([2, 0]), {"x": np.array([20, 0]), "img": np.zeros((2, 3, 3, 1))}),
             (np.array([1]), {"x": np.array([10]), "img": np.ones((1, 4, 4, 3))})]
    out = auto.merge_rows(3, parts)
    assert list(out["x"]) == [0, 10, 20]
    assert [a.shape for a in out["img"]] == [(3, 3, 1), (4, 4, 3), (3, 3, 1)]


# ---------------------------------------------------------------- export paths and writes


def test_export_paths_never_leave_the_folder(tmp_path):
    for bad in HOSTILE[:2] + ["a/../../x.png", "a//b.png", "./a.png", "C:\\win\\path", ""]:
        with pytest.raises(ValueError):
            images.export_target(str(tmp_path), bad)
    assert images.export_relpath("2024/IMG_1.JPG", "png") == "2024/IMG_1.png"
    assert images.export_relpath("a/b.PNG", "png") == "a/b.PNG"
    assert images.export_relpath("a/b.JPG", "same") == "a/b.JPG"
    assert images.export_target(str(tmp_path), "a/b.png") == str(tmp_path / "a" / "b.png")
    # a folder inside the export folder that links elsewhere is refused too
    (tmp_path / "exp").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "exp" / "link")
    with pytest.raises(ValueError, match="outside the export folder"):
        images.export_target(str(tmp_path / "exp"), "link/x.png")


def test_export_writes_are_whole_and_never_replace_a_stranger(tmp_path):
    target = str(tmp_path / "d" / "x.png")
    images.write_new(target, b"one", replace=False)
    with pytest.raises(FileExistsError):
        images.write_new(target, b"two", replace=False)
    assert open(target, "rb").read() == b"one"
    images.write_new(target, b"three", replace=True)
    assert open(target, "rb").read() == b"three"
    assert os.listdir(tmp_path / "d") == ["x.png"]  # no temporary left behind


def test_export_encoding_keeps_the_format_and_16_bits():
    g16 = np.random.default_rng(1).integers(0, 65536, (6, 5, 1), dtype=np.uint16)
    png16 = shards.encode_png(g16)
    assert images.encode_export(png16, "a.tif", "png") == png16
    tif = Image.open(io.BytesIO(images.encode_export(png16, "a.tif", "same")))
    assert tif.format == "TIFF" and np.array_equal(np.asarray(tif), g16[:, :, 0])
    rgb = shards.encode_png(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    lo, hi = (images.encode_export(rgb, "p.jpg", "same", q) for q in (20, 95))
    assert Image.open(io.BytesIO(hi)).format == "JPEG" and len(lo) < len(hi)
    assert Image.open(io.BytesIO(images.encode_export(png16, "a.jpeg", "same"))).mode == "L"  # 8-bit JPEG
    rgb16 = np.random.default_rng(2).integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    png = shards.encode_png(rgb16)
    np.testing.assert_array_equal(images.decode_image(images.encode_export(png, "a.TIF", "same")), rgb16)
    flat = shards.encode_png(np.full((6, 5, 3), (1000, 30000, 65535), np.uint16))
    jpeg = images.decode_image(images.encode_export(flat, "a.jpg", "same", 100))
    assert jpeg.dtype == np.uint8 and np.abs(jpeg.astype(int) - [4, 117, 255]).max() <= 1  # 16 -> 8 bit


# ---------------------------------------------------------------- the channel error (issue 29: it suggested
# --convert-channels for RGB photos and a gray model, which makes them gray)


def test_channel_mismatch_names_the_model_that_fits():
    msg = inference.channel_mismatch_message(3, 1)
    assert "3-channel images with a 1-channel model: use --model pretrained:color-blind (or pretrained:auto" in msg
    assert msg.index("pretrained:color-blind") < msg.index("--convert-channels")
    assert "use --model pretrained:gray-blind" in inference.channel_mismatch_message(1, 3)


def test_export_needs_image_files_and_keep_removed_needs_shards(folder, tmp_path, tiny_shards):
    from dae.denoise import DenoiseConfig, pipeline

    images_in = files.list_any(folder)
    shards_in = files.list_any(tiny_shards(n_test=2, root=tmp_path / "shards"))
    with pytest.raises(ValueError, match="--export writes each image at its input file's path.*--export-png"):
        pipeline._check_kind(DenoiseConfig(input="x", model="m", output="o", export="e"), shards_in)
    with pytest.raises(ValueError, match="--keep-removed applies to shard inputs"):
        pipeline._check_kind(DenoiseConfig(input="x", model="m", output="o", keep_removed=True), images_in)
    pipeline._check_kind(DenoiseConfig(input="x", model="m", output="o", export="e"), images_in)


def test_auto_picks_the_shipped_models_by_channels():
    assert auto.models("pretrained:auto") == {1: "pretrained:gray-blind", 3: "pretrained:color-blind"}
    cfg = auto.model_config("pretrained:auto")
    assert cfg["channels"] == 0 and {k: v["channels"] for k, v in cfg["by_channels"].items()} == {"1": 1, "3": 3}
