"""Per-source readers on small files in exactly the real formats (written by tests/helpers.py), plus the
bundled offline data."""

import gzip
import os
import struct

import numpy as np
import pytest
from PIL import Image

from dae import shards
from dae.sources import SourceError, cifar, folder, get_source, hash_unit, idx, is_test, list_sources, offline, svhn, tv
from helpers import (  # writers of the real formats, shared with test_prepare.py
    RNG,
    idx_bytes,
    make_image_folder,
    needs_mnist5k,
    needs_natural,
    small_idx,
    write_cifar_dir,
    write_idx_dir,
    write_svhn_mat,
)


def consume(prepared):
    return {s: list(recs) for s, recs in prepared.splits.items()}


# ---------------------------------------------------------------- registry and split helpers


def test_registry_lists_valid_sources():
    assert {"idx", "svhn", "cifar10", "folder", "torchvision", "mnist5k", "fashion-mnist", "sklearn-digits",
            "photos"} <= set(list_sources())
    with pytest.raises(ValueError, match="valid sources: idx, svhn, cifar10"):
        get_source("imagenet")


def test_a_new_source_is_one_registration_with_its_own_options(monkeypatch, tmp_path):
    """A source declares its reader, options and input folders in one place (@register_source): its
    options become settings of PrepareConfig (flags, preset keys) beside the common ones."""
    from dataclasses import dataclass, field

    from dae.config import command_line, settings
    from dae.prepare import PrepareConfig
    from dae.sources import Prepared, input_dirs, open_source, registry

    monkeypatch.setattr(registry, "SOURCES", dict(registry.SOURCES))  # registrations below are undone

    @dataclass(frozen=True)
    class ToyOptions:
        count: int = field(default=2, metadata={"help": "toy: images per split"})

    @registry.register_source("toy", "a few black images", options=ToyOptions,
                              inputs=lambda cfg, opts: [cfg.input or "toys"])
    def open_toy(cfg, opts):
        records = {s: [(f"toy/{s}/{i}", np.zeros((2, 2), np.uint8), None) for i in range(opts.count)]
                   for s in ("train", "test")}
        return Prepared(dataset=cfg.name or "toy", source="toy", splits=records)

    assert list(settings(PrepareConfig))[-1] == "count" and registry.list_sources()[-1] == "toy"
    cfg = PrepareConfig(source="toy", out="o", options=ToyOptions(count=3))
    assert PrepareConfig(source="toy").options == ToyOptions()
    assert [len(v) for v in consume(open_source(cfg)).values()] == [3, 3]
    assert input_dirs(cfg) == ["toys"] and command_line("jobs.prepare", cfg).endswith("--count 3")
    with pytest.raises(ValueError, match="'toy' is registered twice"):
        registry.register_source("toy", "again")
    with pytest.raises(TypeError, match="options must be a frozen dataclass"):
        registry.register_source("toy2", "mutable options", options=dataclass(type("Opts", (), {})))

    @dataclass(frozen=True)
    class ClashingOptions:
        count: int = 5  # another default for the same setting

    registry.register_source("toy3", "a clash", options=ClashingOptions)(open_toy)
    with pytest.raises(TypeError, match="ClashingOptions.count clashes with another setting of PrepareConfig"):
        settings(PrepareConfig)


def test_hash_split_is_stable_and_close_to_fraction():
    # A fixed value guards against an accidental change of the hash (it would reshuffle splits).
    assert hash_unit("a/b.png") == pytest.approx(0.49470497835342325, abs=1e-15)  # blake2b-64, pinned
    assert 0 <= hash_unit("x") < 1
    share = np.mean([is_test(f"img/{i}.png", 0.2) for i in range(5000)])
    assert 0.18 < share < 0.22
    assert not any(is_test(f"{i}", 0.0) for i in range(100)) and all(is_test(f"{i}", 1.0) for i in range(100))


# ---------------------------------------------------------------- idx


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    tr, trl, te, tel = small_idx()
    write_idx_dir(tmp_path, tr, trl, te, tel, gz=gz)
    out = consume(idx.prepare(str(tmp_path), dataset="mnist"))
    assert [r[0] for r in out["train"]] == [f"mnist/train/{i:06d}" for i in range(7)]
    np.testing.assert_array_equal(np.stack([r[1] for r in out["train"]]), tr)
    np.testing.assert_array_equal(np.stack([r[1] for r in out["test"]]), te)
    assert [r[2] for r in out["train"]] == trl.tolist() and [r[2] for r in out["test"]] == tel.tolist()


def test_idx_dotted_names_and_limit(tmp_path):
    tr, trl, te, tel = small_idx()
    write_idx_dir(tmp_path, tr, trl, te, tel, gz=False, dotted=True)
    out = consume(idx.prepare(str(tmp_path), limit=2))
    assert len(out["train"]) == 2 and len(out["test"]) == 2
    assert out["train"][0][0] == f"{tmp_path.name}/train/000000"  # dataset defaults to the folder name


def test_idx_parse_errors():
    a = RNG.integers(0, 256, (2, 4, 4), dtype=np.uint8)
    good = idx_bytes(a)
    np.testing.assert_array_equal(idx.parse_idx(good), a)
    with pytest.raises(SourceError, match="not an IDX file"):
        idx.parse_idx(b"\x01\x02" + good[2:])
    with pytest.raises(SourceError, match="unknown IDX data type 0x07"):
        idx.parse_idx(good[:2] + b"\x07" + good[3:])
    with pytest.raises(SourceError, match="truncated: header says"):
        idx.parse_idx(good[:-5], "f")
    with pytest.raises(SourceError, match="truncated IDX header"):
        idx.parse_idx(good[:9])
    with pytest.raises(SourceError, match="trailing bytes"):
        idx.parse_idx(good + b"\x00")
    # big-endian int32 payloads are decoded with the right byte order
    vals = np.array([1, -2, 70000], dtype=">i4")
    data = struct.pack(">BBBBI", 0, 0, 0x0C, 1, 3) + vals.tobytes()
    assert idx.parse_idx(data).tolist() == [1, -2, 70000]


def test_idx_file_errors(tmp_path):
    tr, trl, te, tel = small_idx()
    write_idx_dir(tmp_path, tr, trl, te, tel, gz=True)
    # truncated gzip
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(SourceError, match="corrupt or truncated gzip"):
        idx.prepare(str(tmp_path))
    # images/labels count mismatch
    with gzip.open(p, "wb") as fh:
        fh.write(idx_bytes(te[:2]))
    with pytest.raises(SourceError, match="2 images .* but 3 labels"):
        idx.prepare(str(tmp_path))
    # labels file with image dims
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(idx_bytes(te[:2]))
    with pytest.raises(SourceError, match="expected uint8 labels"):
        idx.prepare(str(tmp_path))
    os.remove(tmp_path / "train-labels-idx1-ubyte.gz")
    with pytest.raises(SourceError, match="no train labels file"):
        idx.prepare(str(tmp_path))


# ---------------------------------------------------------------- svhn


def test_svhn_mat_roundtrip(tmp_path):
    imgs = {s: RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for s, n in (("train", 6), ("test", 4))}
    digits = {"train": np.array([0, 1, 9, 0, 5, 3]), "test": np.array([7, 0, 2, 2])}
    for s in imgs:
        write_svhn_mat(tmp_path / f"{s}_32x32.mat", imgs[s], digits[s])
    out = consume(svhn.prepare(str(tmp_path)))
    for s in imgs:
        np.testing.assert_array_equal(np.stack([r[1] for r in out[s]]), imgs[s])
        assert [r[2] for r in out[s]] == digits[s].tolist()  # 10 -> 0
    assert out["test"][1][0] == "svhn/test/000001"
    # pixel (row 3, col 5, green) of image 2 in the real X layout (H, W, C, N)
    import scipy.io

    X = scipy.io.loadmat(tmp_path / "train_32x32.mat")["X"]
    assert out["train"][2][1][3, 5, 1] == X[3, 5, 1, 2]


def test_svhn_errors(tmp_path):
    import scipy.io

    with pytest.raises(SourceError, match="missing SVHN file"):
        svhn.prepare(str(tmp_path))
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((3, 32, 32, 2), np.uint8), "y": np.ones((3, 1))})
    with pytest.raises(SourceError, match=r"X must be uint8 of shape \(H, W, 3, N\)"):
        svhn.load_mat(str(tmp_path / "train_32x32.mat"))
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))})
    with pytest.raises(SourceError, match="y must have shape"):
        svhn.load_mat(str(tmp_path / "train_32x32.mat"))
    (tmp_path / "bad.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(SourceError, match="not a readable MATLAB"):
        svhn.load_mat(str(tmp_path / "bad.mat"))


# ---------------------------------------------------------------- cifar10


def test_cifar_binary_roundtrip(tmp_path):
    truth = write_cifar_dir(tmp_path / "cifar-10-batches-bin")
    prepared = cifar.prepare(str(tmp_path))  # finds the cifar-10-batches-bin sub-folder
    assert prepared.classes[0] == "airplane"
    out = consume(prepared)
    for s in ("train", "test"):
        np.testing.assert_array_equal(np.stack([r[1] for r in out[s]]), truth[s][0])
        assert [r[2] for r in out[s]] == truth[s][1].tolist()
    assert len(out["train"]) == 15 and out["train"][14][0] == "cifar10/train/000014"
    # one record by hand: byte 1 + 1024*1 + 32*2 + 7 is green at row 2, col 7 of the first image
    raw = (tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes()
    assert out["train"][0][1][2, 7, 1] == raw[1 + 1024 + 32 * 2 + 7] and out["train"][0][2] == raw[0]


def test_cifar_errors(tmp_path):
    with pytest.raises(SourceError, match="no CIFAR-10 binary files"):
        cifar.prepare(str(tmp_path))
    write_cifar_dir(tmp_path)
    with open(tmp_path / "data_batch_3.bin", "ab") as fh:
        fh.write(b"\x00" * 10)
    with pytest.raises(SourceError, match="not a positive multiple of 3073"):
        cifar.prepare(str(tmp_path))
    with pytest.raises(SourceError, match="out of range 0..9"):
        cifar.parse_batch(bytes([42]) + bytes(3072))
    (tmp_path / "data_batch_3.bin").write_bytes((tmp_path / "data_batch_3.bin").read_bytes()[:-10])
    os.remove(tmp_path / "data_batch_5.bin")
    with pytest.raises(SourceError, match="missing CIFAR-10 file .*data_batch_5.bin"):
        cifar.prepare(str(tmp_path))


# ---------------------------------------------------------------- folder


def test_folder_decode_modes_and_errors(tmp_path):
    expected = make_image_folder(tmp_path)
    (tmp_path / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (tmp_path / "notes.txt").write_text("not an image")
    prepared = folder.prepare(str(tmp_path), test_fraction=0.0, labels_from_subdirs=True)
    assert prepared.classes == ["birds", "cats", "dogs"]
    out = consume(prepared)
    assert out["test"] == []
    got = {r[0]: r for r in out["train"]}
    assert sorted(got) == sorted(expected)  # ids are relative paths; the .txt is ignored
    assert [r[0] for r in out["train"]] == sorted(got)  # sorted by id
    for rel, want in expected.items():
        rid, enc, label = got[rel]
        arr = shards.decode_png(enc.png)
        assert (enc.height, enc.width, enc.channels) == arr.shape
        assert label == ["birds", "cats", "dogs"].index(rel.split("/")[0])
        if want is None:
            assert arr.shape == (16, 32, 3) and arr.dtype == np.uint8
        else:
            assert arr.dtype == want.dtype, rel
            np.testing.assert_array_equal(arr, want)
    assert prepared.stats["alpha_dropped"] == 1
    assert len(prepared.errors) == 1 and prepared.errors[0]["path"] == "dogs/broken.png"
    assert "undecodable" in prepared.errors[0]["reason"] and " at 0x" not in prepared.errors[0]["reason"]


def test_folder_root_files_without_class_are_errors(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "loose.png")
    os.makedirs(tmp_path / "a")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a" / "x.png")
    prepared = folder.prepare(str(tmp_path), labels_from_subdirs=True, test_fraction=0.0)
    out = consume(prepared)
    assert [r[0] for r in out["train"]] == ["a/x.png"]
    assert prepared.errors == [{"path": "loose.png", "reason": "not inside a class sub-folder (--labels-from-subdirs)"}]


def test_folder_split_by_path_hash_and_limit(tmp_path):
    for i in range(40):
        Image.fromarray(np.full((3, 3), i, np.uint8)).save(tmp_path / f"{i:03d}.png")
    out = consume(folder.prepare(str(tmp_path), test_fraction=0.3))
    for s in ("train", "test"):
        assert all(is_test(r[0], 0.3) == (s == "test") for r in out[s])
        assert all(r[2] is None for r in out[s])
    assert 0 < len(out["test"]) < 40 and len(out["train"]) + len(out["test"]) == 40
    limited = consume(folder.prepare(str(tmp_path), test_fraction=0.3, limit=2))
    assert [r[0] for r in limited["train"]] == [r[0] for r in out["train"][:2]]


def test_folder_empty_and_missing(tmp_path):
    with pytest.raises(SourceError, match="no image files"):
        folder.prepare(str(tmp_path))
    with pytest.raises(SourceError, match="not a directory"):
        folder.prepare(str(tmp_path / "nope"))


def test_decode_files_batch_is_pure_and_keeps_bad_rows(tmp_path):
    p = tmp_path / "a.bmp"
    Image.fromarray(np.full((2, 3, 3), 7, np.uint8)).save(p)
    out = folder.decode_files_batch({"path": np.array([str(p), str(tmp_path / "missing.png")]),
                                     "id": np.array(["a.bmp", "missing.png"])})
    assert out["id"].tolist() == ["a.bmp", "missing.png"]
    assert out["error"][0] == "" and "unreadable file" in out["error"][1] and out["png"][1] == b""
    assert shards.decode_png(out["png"][0]).shape == (2, 3, 3)


def test_a_16_bit_rgb_file_is_prepared_16_bit():
    # Pillow reads a 16-bit RGB TIFF as 8-bit RGB without a word (dae.codec.decode_wide reads it)
    import io

    import tifffile

    a = np.random.default_rng(4).integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, a, photometric="rgb")
    enc, had_alpha = folder.decode_file(buf.getvalue())
    assert (enc.height, enc.width, enc.channels, had_alpha) == (5, 6, 3, False)
    np.testing.assert_array_equal(shards.decode_png(enc.png), a)


def test_a_phone_photo_is_prepared_upright_as_denoise_reads_it():
    """A JPEG stored sideways with an EXIF orientation (as phones write them) becomes the same upright
    image in a prepared shard as in the denoise job's file reader (dae.images.decode_image)."""
    import io

    from dae import images

    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, :, 0] = 255  # a red top row: where it lands shows the rotation
    exif = Image.Exif()
    exif[274] = 6  # "rotate 90 clockwise to view"
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    enc, _ = folder.decode_file(buf.getvalue())
    assert (enc.height, enc.width) == (6, 4)
    np.testing.assert_array_equal(shards.decode_png(enc.png), images.decode_image(buf.getvalue()))


# ---------------------------------------------------------------- torchvision (offline)


def test_torchvision_mnist_offline(tmp_path):
    # torchvision 0.29 MNIST reads ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    # (uncompressed; existence checked, no MD5) when there is no legacy processed/ folder.
    tr, trl, te, tel = small_idx(n_train=5, n_test=4)
    write_idx_dir(tmp_path / "MNIST" / "raw", tr, trl, te, tel, gz=False)
    prepared = tv.prepare("mnist", root=str(tmp_path))
    out = consume(prepared)
    assert prepared.dataset == "mnist" and prepared.classes[0] == "0 - zero"
    np.testing.assert_array_equal(np.stack([r[1][:, :, 0] for r in out["train"]]), tr)
    np.testing.assert_array_equal(np.stack([r[1][:, :, 0] for r in out["test"]]), te)
    assert [r[2] for r in out["test"]] == tel.tolist()
    assert out["train"][4][0] == "mnist/train/000004"


def test_torchvision_missing_files_names_layout(tmp_path):
    with pytest.raises(SourceError, match="MNIST/raw/.*--download"):
        tv.prepare("MNIST", root=str(tmp_path))
    with pytest.raises(ValueError, match="valid: MNIST, FashionMNIST, SVHN, CIFAR10"):
        tv.prepare("ImageNet", root=str(tmp_path))


# ---------------------------------------------------------------- offline bundled data


def test_mnist5k_real_digits():
    needs_mnist5k()  # the real digits, or a skip saying why
    images, labels = offline.load_mnist5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    prepared = offline.mnist5k()
    out = consume(prepared)
    assert len(out["train"]) == 4000 and len(out["test"]) == 1000
    assert np.bincount([r[2] for r in out["test"]]).tolist() == [100] * 10
    assert [r[2] for r in out["train"][:10]] == list(range(10))  # round-robin: every prefix has all digits
    ids = [r[0] for r in out["train"] + out["test"]]
    assert len(set(ids)) == 5000
    row = int(out["test"][3][0].rsplit("/", 1)[1])  # ids carry the CSV row
    np.testing.assert_array_equal(out["test"][3][1], images[row])
    assert out["test"][3][2] == labels[row]
    # real handwriting, not noise: mostly background with a stroke of bright pixels
    assert 0.05 < (images > 128).mean() < 0.3


def test_sklearn_digits_scaled():
    from sklearn.datasets import load_digits

    d = load_digits()
    out = consume(offline.sklearn_digits(test_fraction=0.2))
    assert len(out["train"]) + len(out["test"]) == 1797 and 250 < len(out["test"]) < 470
    rid, img, label = out["test"][0]
    i = int(rid.rsplit("/", 1)[1])
    assert img.shape == (8, 8) and img.dtype == np.uint8 and label == d.target[i]
    np.testing.assert_array_equal(img, np.rint(d.images[i] * 255 / 16).astype(np.uint8))
    assert max(int(r[1].max()) for r in out["train"]) == 255


def test_photos_grid_gray_and_split_by_photo():
    import skimage.data

    prepared = offline.photos(photos=["camera", "coffee", "chelsea"], patch_size=64, color="gray",
                              test_fraction=0.34)
    out = consume(prepared)
    train_photos = {r[0].split("/")[2] for r in out["train"]}
    test_photos = {r[0].split("/")[2] for r in out["test"]}
    assert train_photos and test_photos and not train_photos & test_photos
    assert all(r[1].shape == (64, 64) for r in out["train"] + out["test"])
    cam = [r for r in out["train"] + out["test"] if r[0].split("/")[2] == "camera"]
    assert len(cam) == 64  # 512 / 64 = 8 x 8 grid
    rid, patch, label = cam[9]
    assert rid.endswith("camera/y0064-x0064") and label == 0
    np.testing.assert_array_equal(patch, skimage.data.camera()[64:128, 64:128])
    coffee = [r for r in out["train"] + out["test"] if "/coffee/" in r[0]]
    assert len(coffee) == (400 // 64) * (600 // 64)
    want = np.asarray(Image.fromarray(skimage.data.coffee()).convert("L"))[:64, 64:128]
    np.testing.assert_array_equal(coffee[1][1], want)


def test_photos_random_rgb_seeded_and_split_by_patch():
    kw = dict(photos=["astronaut", "camera"], patch_size=32, mode="random", patches_per_photo=50,
              split_by="patch", test_fraction=0.2)
    a = consume(offline.photos(seed=3, **kw))
    b = consume(offline.photos(seed=3, **kw))
    c = consume(offline.photos(seed=4, **kw))
    assert [r[0] for r in a["train"]] == [r[0] for r in b["train"]]
    assert [r[0] for r in a["train"]] != [r[0] for r in c["train"]]
    assert len(a["train"]) + len(a["test"]) == 100 and a["test"]
    assert all(r[1].shape == (32, 32, 3) and r[1].dtype == np.uint8 for r in a["train"])
    gray = [r for r in a["train"] if "/camera/" in r[0]][0]  # gray photo repeated on 3 channels
    assert (gray[1][:, :, 0] == gray[1][:, :, 2]).all()
    with pytest.raises(SourceError, match="valid photos: astronaut"):
        offline.photos(photos=["mona-lisa"])


def test_fashion_mnist_from_debian_package():
    if not os.path.isdir(offline.FASHION_MNIST_DIR):
        pytest.skip(f"{offline.FASHION_MNIST_DIR} missing: Debian package dataset-fashion-mnist not installed")
    out = consume(offline.fashion_mnist(limit=5))
    assert len(out["train"]) == 5 and len(out["test"]) == 5
    # independent check: the raw IDX payload of the first test image and label
    with gzip.open(os.path.join(offline.FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")) as fh:
        raw = fh.read(16 + 784)
    with gzip.open(os.path.join(offline.FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")) as fh:
        lab = fh.read(9)[8]
    np.testing.assert_array_equal(out["test"][0][1], np.frombuffer(raw[16:], np.uint8).reshape(28, 28))
    assert out["test"][0][2] == lab and out["test"][0][0] == "fashion-mnist/test/000000"


def test_fashion_mnist_missing_names_debian_package(tmp_path):
    with pytest.raises(SourceError, match="dataset-fashion-mnist"):
        offline.fashion_mnist(str(tmp_path / "absent"))


def test_folder_lists_underscore_files_and_ignores_hidden(tmp_path):
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "_under.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / ".hidden.png")
    (tmp_path / "x").mkdir()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "x" / "a.PNG")
    images, other = folder.list_images(str(tmp_path))
    assert images == ["_under.png", "x/a.PNG"] and other == [".hidden.png"]


# ---------------------------------------------------------------- one folder per split; the benchmark sets


def test_split_dirs_read_each_split_from_its_folder(tmp_path):
    from dae.sources import folder

    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            (tmp_path / split / "sub").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4 + i, 5, 3), 40 * i, np.uint8)).save(tmp_path / split / "sub" / f"{i}.png")
    p = folder.prepare("", dataset="mine", labels_from_subdirs=True,
                       split_dirs={"train": str(tmp_path / "train"), "test": str(tmp_path / "test")})
    rows = {s: list(r) for s, r in p.splits.items()}
    assert [r[0] for r in rows["train"]] == ["train/sub/0.png", "train/sub/1.png", "train/sub/2.png"]
    assert [r[0] for r in rows["test"]] == ["test/sub/0.png", "test/sub/1.png"]
    assert {r[2] for r in rows["train"] + rows["test"]} == {0} and p.classes == ["sub"]
    assert rows["test"][1][1].height == 5
    with pytest.raises(SourceError, match="unknown split 'val'; valid: train, test"):
        folder.prepare("", split_dirs={"val": str(tmp_path / "test")})
    with pytest.raises(SourceError, match="is not a directory"):
        folder.prepare("", split_dirs={"test": str(tmp_path / "missing")})


def test_natural_sets_by_name_and_clear_errors(tmp_path):
    from dae.sources import natural

    root = needs_natural()
    p = natural.prepare(["train=Train400", "test=BSD68"], limit=3)
    rows = {s: list(r) for s, r in p.splits.items()}
    assert p.dataset == "Train400-BSD68" and [len(v) for v in rows.values()] == [3, 3]
    assert rows["test"][0][0] == "test/test001.png"
    assert {(r[1].height, r[1].width) for r in rows["test"]} <= {(481, 321), (321, 481)}  # real BSD68 photos
    assert all(r[1].channels == 1 for r in rows["test"]) and rows["train"][0][1].height == 180
    with pytest.raises(SourceError, match="unknown set 'BSD100'; valid: Train400, CBSD432, Set12, BSD68"):
        natural.prepare(["test=BSD100"])
    with pytest.raises(SourceError, match=f"set Kodak24 is not at {tmp_path}/test/Kodak24"):
        natural.prepare(["test=Kodak24"], root=str(tmp_path))
    with pytest.raises(SourceError, match="needs --sets"):
        natural.prepare([])
    assert os.path.isdir(os.path.join(root, "test", "CBSD68"))


def test_natural_default_root_names_where_it_looked(monkeypatch, tmp_path):
    from dae.sources import natural

    monkeypatch.setattr(natural, "candidate_roots", lambda: [str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(SourceError, match=f"not in {tmp_path}/a nor {tmp_path}/b; pass --input DIR"):
        natural.default_root()
