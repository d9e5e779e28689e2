"""The prepare job in process, without Ray: every source to shards, metadata, side files, deterministic
output; and the command lines recorded from configs (dae.config.command_line). The Ray Data folder
reader, the demo and object storage are in tests/e2e/test_prepare.py."""

import importlib
import json
import os
import shlex

import numpy as np
import pytest

from dae import shards
from dae.config import build_config, command_line, resolve_config
from dae.sources import cifar, is_test
from helpers import (file_digests, make_image_folder, needs_mnist5k, rows_of, run_job, small_idx, write_cifar_dir,
                     write_idx_dir, write_svhn_mat)
from jobs import prepare


def run(*argv):
    return run_job("prepare", *argv)


def test_idx_job_writes_shards_metadata_and_summary(tmp_path, capsys):
    tr, trl, te, tel = small_idx(n_train=9, n_test=4)
    write_idx_dir(tmp_path / "in", tr, trl, te, tel, gz=True)
    out = tmp_path / "out"
    summary = run("--source", "idx", "--input", tmp_path / "in", "--name", "mnist", "--out", out,
                  "--rows-per-shard", 4, "--preview", 6)
    assert summary["splits"] == {"train": {"images": 9, "files": 3}, "test": {"images": 4, "files": 1}}
    files = shards.list_shards(str(out), "train")
    assert [os.path.basename(f) for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    md = shards.shard_metadata(files[0])
    assert md["dae.dataset"] == "mnist" and md["dae.source"].startswith("idx:")
    rows = rows_of(out, "train")
    assert [r["id"] for r in rows] == [f"mnist/train/{i:06d}" for i in range(9)]
    assert [r["label"] for r in rows] == trl.tolist() and {r["split"] for r in rows} == {"train"}
    np.testing.assert_array_equal(shards.decode_png(rows[5]["image"])[:, :, 0], tr[5])
    assert (out / "preview.png").exists() and (out / "summary.json").exists()
    assert json.loads((out / "config.resolved.json").read_text())["source"] == "idx"
    printed = capsys.readouterr().out
    assert "train        9 images in 3 shard file(s)" in printed and "images/s" in printed


def test_limit_and_existing_output(tmp_path):
    tr, trl, te, tel = small_idx(n_train=9, n_test=4)
    write_idx_dir(tmp_path / "in", tr, trl, te, tel, gz=False)
    out = tmp_path / "out"
    run("--source", "idx", "--input", tmp_path / "in", "--out", out, "--limit", 3)
    with pytest.raises(FileExistsError, match="--overwrite"):
        run("--source", "idx", "--input", tmp_path / "in", "--out", out)
    run("--source", "idx", "--input", tmp_path / "in", "--out", out, "--limit", 2, "--overwrite",
        "--rows-per-shard", 1)
    assert len(rows_of(out, "train")) == 2 and len(shards.list_shards(str(out), "train")) == 2


def test_svhn_and_cifar_jobs_roundtrip_pixels(tmp_path):
    rng = np.random.default_rng(5)
    imgs = {s: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for s, n in (("train", 5), ("test", 3))}
    digits = {"train": np.array([0, 3, 9, 0, 1]), "test": np.array([2, 0, 4])}
    (tmp_path / "svhn").mkdir()
    for s in imgs:
        write_svhn_mat(tmp_path / "svhn" / f"{s}_32x32.mat", imgs[s], digits[s])
    run("--source", "svhn", "--input", tmp_path / "svhn", "--out", tmp_path / "svhn_out")
    for s in imgs:
        rows = rows_of(tmp_path / "svhn_out", s)
        np.testing.assert_array_equal(np.stack([shards.decode_png(r["image"]) for r in rows]), imgs[s])
        assert [r["label"] for r in rows] == digits[s].tolist()

    truth = write_cifar_dir(tmp_path / "cifar")
    summary = run("--source", "cifar10", "--input", tmp_path / "cifar", "--out", tmp_path / "cifar_out",
                  "--limit", 10)
    assert summary["splits"]["train"]["images"] == 10 and summary["splits"]["test"]["images"] == 4
    rows = rows_of(tmp_path / "cifar_out", "train")
    np.testing.assert_array_equal(np.stack([shards.decode_png(r["image"]) for r in rows]), truth["train"][0][:10])
    assert [r["label"] for r in rows] == truth["train"][1][:10].tolist()
    classes = json.loads((tmp_path / "cifar_out" / "classes.json").read_text())
    assert classes["classes"] == cifar.CLASSES and classes["class_to_label"]["truck"] == 9


def test_folder_job_in_process(tmp_path, capsys):
    expected = make_image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "cats" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    out = tmp_path / "out"
    summary = run("--source", "folder", "--input", tmp_path / "imgs", "--out", out, "--labels-from-subdirs",
                  "--test-fraction", 0.3)
    rows = rows_of(out, "train") + rows_of(out, "test")
    assert sorted(r["id"] for r in rows) == sorted(expected)
    for r in rows:
        assert is_test(r["id"], 0.3) == (r["split"] == "test")
        assert r["label"] == ["birds", "cats", "dogs"].index(r["id"].split("/")[0])
        want = expected[r["id"]]
        if want is not None:
            np.testing.assert_array_equal(shards.decode_png(r["image"]), want)
    assert json.loads((out / "classes.json").read_text())["classes"] == ["birds", "cats", "dogs"]
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["path"] for e in errors] == ["cats/corrupt.jpg"] and errors[0]["reason"]
    assert summary["errors"] == 1 and summary["stats"]["alpha_dropped"] == 1
    printed = capsys.readouterr().out
    assert "1 unreadable file(s)" in printed and "alpha channel dropped from 1 image(s)" in printed


@pytest.mark.parametrize("source", ["mnist5k", "sklearn-digits", "photos"])
def test_offline_sources_rerun_identical(tmp_path, source):
    if source == "mnist5k":
        needs_mnist5k()  # the real digits, or a skip saying why
    argv = ["--source", source, "--limit", 40, "--rows-per-shard", 16]
    a = run(*argv, "--out", tmp_path / "a")
    b = run(*argv, "--out", tmp_path / "a2")
    run(*argv, "--out", tmp_path / "a", "--overwrite")
    digests = file_digests(tmp_path / "a")
    assert digests and digests == file_digests(tmp_path / "a2")
    assert sorted(digests) == ["test/part-00000.parquet", "test/part-00001.parquet", "test/part-00002.parquet",
                               "train/part-00000.parquet", "train/part-00001.parquet", "train/part-00002.parquet"]
    assert a["splits"] == b["splits"]
    ids = [r["id"] for s in ("train", "test") for r in rows_of(tmp_path / "a", s)]
    assert len(ids) == len(set(ids)) == 80 and all(i.startswith(f"{source}/") for i in ids)


def test_photos_gray_patches_job(tmp_path):
    summary = run("--source", "photos", "--photos", "camera,coffee", "--color", "gray", "--patch-size", 100,
                  "--out", tmp_path / "o", "--test-fraction", 0.5)
    rows = rows_of(tmp_path / "o", "train") + rows_of(tmp_path / "o", "test")
    assert {(r["height"], r["width"], r["channels"]) for r in rows} == {(100, 100, 1)}
    assert summary["images"] == 25 + 4 * 6  # camera 512x512 -> 5x5, coffee 400x600 -> 4x6


def test_torchvision_job_offline(tmp_path):
    tr, trl, te, tel = small_idx(n_train=6, n_test=2)
    write_idx_dir(tmp_path / "tv" / "MNIST" / "raw", tr, trl, te, tel, gz=False)
    run("--source", "torchvision", "--tv-name", "MNIST", "--input", tmp_path / "tv", "--out", tmp_path / "o")
    rows = rows_of(tmp_path / "o", "train")
    np.testing.assert_array_equal(np.stack([shards.decode_png(r["image"])[:, :, 0] for r in rows]), tr)
    assert shards.shard_metadata(shards.list_shards(str(tmp_path / "o"), "test")[0])["dae.dataset"] == "mnist"


def test_fashion_mnist_job(tmp_path):
    from dae.sources import offline

    if not os.path.isdir(offline.FASHION_MNIST_DIR):
        pytest.skip(f"{offline.FASHION_MNIST_DIR} missing: Debian package dataset-fashion-mnist not installed")
    summary = run("--source", "fashion-mnist", "--limit", 20, "--out", tmp_path / "o")
    assert summary["splits"]["train"]["images"] == 20
    assert json.loads((tmp_path / "o" / "classes.json").read_text())["classes"][9] == "Ankle boot"


def test_bad_arguments_list_valid_choices(tmp_path, capsys):
    with pytest.raises(SystemExit):
        prepare.get_args_parser().parse_args(["--source", "imagenet", "--out", "x"])
    assert "choose from 'idx', 'svhn', 'cifar10', 'folder'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--out is required"):
        run("--source", "mnist5k")
    with pytest.raises(ValueError, match="invalid source ''; valid: idx, svhn"):
        run("--out", tmp_path)
    with pytest.raises(ValueError, match="needs --input"):
        run("--source", "svhn", "--out", tmp_path / "o")


# ---------------------------------------------------------------- config -> command line -> config


def _configs():
    from dae.demo import DemoConfig
    from dae.bench.quality_natural import QualityNaturalConfig
    from dae.denoise import DenoiseConfig
    from dae.evaluation import EvaluateConfig
    from dae.prepare import PrepareConfig
    from dae.sweep import SweepConfig
    from dae.train import TrainConfig

    return [
        # bools True (default False), an Optional int, a value with a space, one starting with "-"
        ("jobs.prepare", PrepareConfig(source="folder", input="/tmp/my pictures", out="o", name="-odd", limit=7,
                                       overwrite=True, labels_from_subdirs=True, test_fraction=0.25,
                                       split_dir=("train=a b", "test=c"))),
        # bools False (default True) and True (default False)
        ("jobs.denoise", DenoiseConfig(input="i", model="m", output="o", bf16=False, deterministic=False,
                                       convert_channels=True, max_error_fraction=0.5)),
        # a dict with a float YAML 1.1 would read as a string if written JSON's way (1e-05)
        ("jobs.train", TrainConfig(data="d", model="unet", model_kwargs={"width": 16, "eps": 1e-5, "tag": "yes"},
                                   lr=1e-5, noise="gaussian:0.05-0.6")),
        # nargs words (--noise a b), a bool set, a dict
        ("jobs.demo", DemoConfig(out="x", noise=("gaussian:0.3",), model_kwargs={}, skip_train=True, limit=3)),
        # nested dicts and lists, a tuple of dicts, a tuple of words as YAML, bool True
        ("jobs.quality_sweep", build_config(SweepConfig, {"dry_run": True, "baselines": ["median", "tv"], "out": "q"},
                                            preset="quality-sweep-cpu")),
        # tuples of numbers and words, an empty dict
        ("jobs.quality_natural", QualityNaturalConfig(out="q", sigmas=(15, 50), color_sets=(), train={},
                                                      models=("gray=pretrained:gray-blind",))),
        # nargs words, one with a space
        ("jobs.evaluate", EvaluateConfig(data="d", out="o", noise=("gaussian:0.1", "salt_pepper:0.2"),
                                         models=("m1", "m 2"), baselines=("median",))),
    ]


@pytest.mark.parametrize("module, cfg", _configs(), ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("full", [False, True])
def test_command_line_parses_back_to_the_same_config(module, cfg, full):
    """What command_line writes, the job's own parser + resolve_config read back as an equal config:
    bools as --flag / --no-flag (argparse rejects '--flag True'), dicts and lists as YAML."""
    cmd = command_line(module, cfg, full=full)
    argv = shlex.split(cmd)
    assert argv[:3] == ["python", "-m", module]
    assert "True" not in argv and "False" not in argv
    job = importlib.import_module(module)
    assert resolve_config(type(cfg), job.get_args_parser().parse_args(argv[3:])) == cfg


def test_command_line_spells_bools_and_leaves_defaults_out():
    from dae.denoise import DenoiseConfig
    from dae.prepare import PrepareConfig

    cmd = command_line("jobs.prepare", PrepareConfig(source="mnist5k", out="o", overwrite=True, name="-x"))
    assert cmd == "python -m jobs.prepare --source mnist5k --out o --name=-x --overwrite"
    assert command_line("jobs.denoise", DenoiseConfig(bf16=False)) == "python -m jobs.denoise --no-bf16"
    assert "--bf16 --" in command_line("jobs.denoise", DenoiseConfig(), full=True)
    assert "--limit" not in command_line("jobs.prepare", PrepareConfig(), full=True)  # None: the flag's absence


def test_noisy_flag_marks_the_shards_noisy_only(tmp_path, capsys):
    """--noisy: the collection has no clean version; the shards say so (dae.noisy), the summary too, and a
    split mixing such shards with clean ones is refused."""
    make_image_folder(tmp_path / "imgs")
    run("--source", "folder", "--input", tmp_path / "imgs", "--out", tmp_path / "noisy", "--noisy")
    assert "noisy-only" in capsys.readouterr().out
    run("--source", "folder", "--input", tmp_path / "imgs", "--out", tmp_path / "clean")
    noisy, clean = (shards.list_shards(str(tmp_path / d), "train") for d in ("noisy", "clean"))
    assert shards.is_noisy_only(noisy) and not shards.is_noisy_only(clean)
    assert json.loads((tmp_path / "noisy" / "summary.json").read_text())["noisy_only"] is True
    with pytest.raises(ValueError, match="mixes noisy-only shards"):
        shards.is_noisy_only(noisy + clean)
