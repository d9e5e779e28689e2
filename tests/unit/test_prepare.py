"""The prepare job in process, without Ray: every source to shards, metadata, side files, deterministic
output; and the command lines recorded from configs (dae.config.command_line). The Ray Data folder
reader, the demo and object storage are in tests/e2e/test_prepare.py."""

import importlib
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dae import shards
from dae.config import build_config, command_line, resolve_config
from dae.sources import cifar, is_test
from helpers import (
    REPO,
    file_digests,
    job_env,
    make_image_folder,
    needs_mnist5k,
    rows_of,
    run_job,
    small_idx,
    tail,
    write_cifar_dir,
    write_idx_dir,
    write_svhn_mat,
)
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
    from dae.denoise import DenoiseConfig
    from dae.evaluate import EvaluateConfig
    from dae.experiments.quality_natural import QualityNaturalConfig
    from dae.experiments.sweep import SweepConfig
    from dae.prepare import PrepareConfig
    from dae.train import TrainConfig

    return [
        # bools True (default False), an Optional int, a value with a space, one starting with "-"
        ("jobs.prepare", PrepareConfig.from_flat(source="folder", input="/tmp/my pictures", out="o", name="-odd",
                                                 limit=7, overwrite=True, labels_from_subdirs=True, test_fraction=0.25,
                                                 split_dir=("train=a b", "test=c"))),
        # a source's options: words, choices, a shared Ray Data setting, a bool
        ("jobs.prepare", PrepareConfig.from_flat(source="natural", out="o", sets=("train=Train400", "test=BSD68"),
                                                 files_per_task=8)),
        ("jobs.prepare", PrepareConfig.from_flat(source="photos", out="o", photos="camera,coffee", color="gray",
                                                 patch_mode="random", seed=3, split_by="patch")),
        ("jobs.prepare", PrepareConfig.from_flat(source="torchvision", out="o", tv_name="SVHN", download=True)),
        # bools False (default True) and True (default False)
        ("jobs.denoise", DenoiseConfig(input="i", model="m", output="o", precision="fp32", deterministic=False,
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
    from dae.cli import COMMANDS

    cmd = command_line(module, cfg, full=full)
    argv = shlex.split(cmd)
    assert argv[0] == "dae" and COMMANDS[argv[1]] == module.removeprefix("jobs.")  # the installed command's name
    assert "True" not in argv and "False" not in argv
    job = importlib.import_module(module)
    assert resolve_config(type(cfg), job.get_args_parser().parse_args(argv[2:])) == cfg


def test_command_line_spells_bools_and_leaves_defaults_out():
    from dae.denoise import DenoiseConfig
    from dae.prepare import PrepareConfig

    cmd = command_line("jobs.prepare", PrepareConfig(source="mnist5k", out="o", overwrite=True, name="-x"))
    assert cmd == "dae prepare --source mnist5k --out o --name=-x --overwrite"
    no_det = command_line("jobs.denoise", DenoiseConfig(deterministic=False))
    assert no_det == "dae denoise --no-deterministic"
    assert "--deterministic --" in command_line("jobs.denoise", DenoiseConfig(), full=True)
    assert "--limit" not in command_line("jobs.prepare", PrepareConfig(), full=True)  # None: the flag's absence


# ---------------------------------------------------------------- each source's options (PrepareConfig.options)

# The flags of jobs.prepare, in order: the common settings, then each source's options (dae.sources).
PREPARE_FLAGS = ["--source", "--out", "--input", "--name", "--rows-per-shard", "--limit", "--test-fraction",
                 "--overwrite", "--preview", "--noisy",
                 "--labels-from-subdirs", "--parallel-min-files", "--files-per-task", "--split-dir",  # folder
                 "--sets",  # natural (and folder's --parallel-min-files, --files-per-task)
                 "--tv-name", "--download",  # torchvision
                 "--photos", "--patch-size", "--color", "--patch-mode", "--patch-stride", "--patches-per-photo",
                 "--split-by", "--seed"]  # photos


def test_the_flags_are_the_common_settings_then_each_sources_options():
    actions = [a for a in prepare.get_args_parser()._actions if a.option_strings]
    flags = [a.option_strings[0] for a in actions]
    assert flags[flags.index("--config") + 1:][:len(PREPARE_FLAGS)] == PREPARE_FLAGS
    assert flags[flags.index("--config") + 1 + len(PREPARE_FLAGS)] == "--s3-endpoint"
    by_flag = {a.option_strings[0]: a for a in actions}
    assert by_flag["--tv-name"].choices == ["MNIST", "FashionMNIST", "SVHN", "CIFAR10"]
    assert (by_flag["--color"].choices, by_flag["--patch-mode"].choices, by_flag["--split-by"].choices) == (
        ["rgb", "gray"], ["grid", "random"], ["photo", "patch"])
    assert by_flag["--split-dir"].nargs == by_flag["--sets"].nargs == "*"
    assert "--no-download" in by_flag["--download"].option_strings
    for flag, default in (("--parallel-min-files", 2000), ("--files-per-task", 256), ("--patch-size", 32),
                          ("--patches-per-photo", 100), ("--tv-name", "MNIST"), ("--split-by", "photo")):
        assert by_flag[flag].help.endswith(f"(default: {default!r})"), (flag, by_flag[flag].help)


def test_each_source_holds_its_own_options():
    from dae.prepare import PrepareConfig
    from dae.sources import FolderOptions, NaturalOptions, PhotosOptions, TorchvisionOptions

    args = prepare.get_args_parser().parse_args(["--source", "folder", "--out", "o", "--split-dir", "train=a",
                                                 "--files-per-task", "8", "--test-fraction", "0.5"])
    cfg = resolve_config(PrepareConfig, args)
    assert cfg.options == FolderOptions(split_dir=("train=a",), files_per_task=8) and cfg.test_fraction == 0.5
    assert PrepareConfig(source="natural").options == NaturalOptions()  # the source's defaults
    assert PrepareConfig(source="idx").options is None and PrepareConfig().options is None  # none of its own
    assert PrepareConfig.from_flat(source="torchvision", tv_name="SVHN").options == TorchvisionOptions("SVHN")
    with pytest.raises(TypeError, match="source 'photos' takes PhotosOptions, got FolderOptions"):
        PrepareConfig(source="photos", options=FolderOptions())
    assert PrepareConfig(source="photos", options=PhotosOptions(seed=2)).options.seed == 2


@pytest.mark.parametrize("argv, says", [
    (["--source", "folder", "--sets", "train=Train400"],
     "--sets: not an option of --source folder (its options: --labels-from-subdirs, --parallel-min-files, "
     "--files-per-task, --split-dir)"),
    (["--source", "idx", "--input", "i", "--color", "gray", "--download"],
     "--download, --color: not options of --source idx (its options: none)"),
    (["--config", "prepare-bsd68", "--source", "photos"], "--sets: not an option of --source photos"),
])
def test_another_sources_option_is_refused_in_one_line(argv, says):
    from dae.prepare import PrepareConfig

    with pytest.raises(ValueError) as e:
        resolve_config(PrepareConfig, prepare.get_args_parser().parse_args(["--out", "o", *argv]))
    assert str(e.value).startswith(says) and "\n" not in str(e.value), e.value
    # at its default it sets nothing, and passes (a config.resolved.json of before the options held them all)
    resolve_config(PrepareConfig, prepare.get_args_parser().parse_args(["--out", "o", "--source", "idx",
                                                                        "--no-download", "--color", "rgb"]))


def test_the_prepare_presets_fill_their_sources_options():
    from dae.prepare import PrepareConfig
    from dae.sources import NaturalOptions, PhotosOptions

    cfg = build_config(PrepareConfig, preset="prepare-photos-gray", presets="prepare")
    assert cfg.options == PhotosOptions(color="gray", patch_size=64, patch_mode="grid", patch_stride=32,
                                        split_by="photo")
    assert (cfg.test_fraction, cfg.rows_per_shard, cfg.preview) == (0.15, 2000, 32)
    for name, sets in (("set12", ("train=Train400", "test=Set12")), ("bsd68", ("train=Train400", "test=BSD68")),
                       ("cbsd68", ("train=CBSD432", "test=CBSD68")), ("kodak24", ("train=CBSD432", "test=Kodak24"))):
        cfg = build_config(PrepareConfig, preset=f"prepare-{name}", presets="prepare")
        assert cfg.source == "natural" and cfg.options == NaturalOptions(sets=sets) and cfg.rows_per_shard == 100
    cfg = build_config(PrepareConfig, preset="prepare-fashion-mnist", presets="prepare")
    assert cfg == PrepareConfig(source="fashion-mnist", rows_per_shard=10000, preview=32)


def test_a_resolved_config_of_before_the_source_options_reruns(tmp_path):
    """config.resolved.json once held every source's option at the top level: at their defaults, the
    other sources' ones set nothing."""
    from dae.prepare import PrepareConfig
    from dae.sources import PhotosOptions

    old = {"source": "photos", "out": "o", "input": "", "name": "", "rows_per_shard": 16, "limit": 40,
           "test_fraction": 0.1, "overwrite": False, "preview": 0, "noisy": False, "labels_from_subdirs": False,
           "parallel_min_files": 2000, "files_per_task": 256, "split_dir": [], "sets": [], "tv_name": "MNIST",
           "download": False, "photos": "camera", "patch_size": 16, "color": "gray", "patch_mode": "grid",
           "patch_stride": 0, "patches_per_photo": 100, "split_by": "photo", "seed": 0,
           "_run": {"seconds": 1.0}}
    (tmp_path / "config.resolved.json").write_text(json.dumps(old))
    args = prepare.get_args_parser().parse_args(["--config", str(tmp_path / "config.resolved.json")])
    assert resolve_config(PrepareConfig, args) == PrepareConfig(
        source="photos", out="o", rows_per_shard=16, limit=40,
        options=PhotosOptions(photos="camera", patch_size=16, color="gray"))


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


# ---------------------------------------------------------------- reruns a user can trust: inputs are never outputs,
# --overwrite deletes only what prepare wrote, and a prepare killed half way is refused until rerun


def _pngs(folder, n: int, seed: int) -> dict:
    """n small gray PNGs in ``folder``; returns {path: bytes}."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (6, 7), dtype=np.uint8)).save(os.path.join(folder, f"img{i}.png"))
    return _bytes_of(os.path.join(folder, f"img{i}.png") for i in range(n))


def _bytes_of(paths) -> dict:
    return {str(p): open(p, "rb").read() for p in paths}


def _all_files(root) -> dict:
    return _bytes_of(os.path.join(d, n) for d, _, names in os.walk(root) for n in names)


def test_out_on_the_split_dirs_parent_is_refused_and_the_images_stay(tmp_path):
    """The user's case: --overwrite deleted DS/train and DS/test, the folders the source was about to read."""
    ds = tmp_path / "DS"
    images = {**_pngs(ds / "train", 3, 0), **_pngs(ds / "test", 2, 1)}
    with pytest.raises(ValueError, match=r"--out \S+DS contains the input folder \S+DS/train: prepare never") as e:
        run("--source", "folder", "--split-dir", f"train={ds / 'train'}", f"test={ds / 'test'}", "--out", ds,
            "--overwrite")
    assert "\n" not in str(e.value)
    assert _all_files(ds) == images  # every image, byte for byte, and nothing written beside them


@pytest.mark.parametrize("out, how", [("imgs/shards", "lies inside"), (".", "contains"), ("imgs/./", "is"),
                                      ("link", "is")])
def test_out_among_the_inputs_is_refused(tmp_path, monkeypatch, out, how):
    monkeypatch.chdir(tmp_path)
    images = _pngs(tmp_path / "imgs", 2, 0)
    os.symlink(tmp_path / "imgs", tmp_path / "link")
    with pytest.raises(ValueError, match=f"--out {out} {how} the input folder imgs"):
        run("--source", "folder", "--input", "imgs", "--out", out, "--overwrite")
    assert _all_files(tmp_path / "imgs") == images
    run("--source", "folder", "--input", "imgs", "--out", "imgs2")  # a sibling whose name starts the same: apart


def test_out_holding_the_input_or_inside_a_default_root_is_refused(tmp_path, monkeypatch):
    from dae.sources import natural

    _pngs(tmp_path / "out" / "imgs", 2, 0)
    with pytest.raises(ValueError, match="contains the input folder"):
        run("--source", "folder", "--input", tmp_path / "out" / "imgs", "--out", tmp_path / "out", "--overwrite")
    # natural without --input reads its default root: an --out in there is refused too
    _pngs(tmp_path / "nat" / "test" / "Set12", 2, 0)
    monkeypatch.setattr(natural, "candidate_roots", lambda: [str(tmp_path / "nat")])
    with pytest.raises(ValueError, match="lies inside the input folder"):
        run("--source", "natural", "--sets", "test=Set12", "--out", tmp_path / "nat" / "shards")
    assert not (tmp_path / "nat" / "shards").exists()


def test_input_dirs_of_the_sources():
    from dae.prepare import PrepareConfig
    from dae.sources import input_dirs, offline

    assert input_dirs(PrepareConfig.from_flat(source="folder", input="a", split_dir=("train=b", "test=c"))) == [
        "a", "b", "c"]
    assert input_dirs(PrepareConfig(source="fashion-mnist")) == [offline.FASHION_MNIST_DIR]
    assert input_dirs(PrepareConfig(source="torchvision")) == ["data/torchvision"]
    assert input_dirs(PrepareConfig(source="idx", input="x")) == ["x"]
    assert input_dirs(PrepareConfig(source="mnist5k")) == []  # data bundled with a package


def test_check_out_apart_compares_whole_path_components():
    from dae.prepare import check_out_apart

    check_out_apart("s3://b/data2", ["s3://b/data"])
    check_out_apart("s3://b/data", ["s3://b/data2", "s3://c/data", "/b/data", "s3://b/dat"])
    for out, inp, how in [("s3://b/data/x", "s3://b/data", "lies inside"), ("s3://b", "s3://b/data", "contains"),
                          ("s3://b/data", "s3://b/data/x/", "contains"), ("s3://b/data/", "s3://b//data", "is")]:
        with pytest.raises(ValueError, match=how):
            check_out_apart(out, [inp])


def test_overwrite_deletes_only_what_prepare_wrote(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _pngs(tmp_path / "imgs", 6, 0)
    out = tmp_path / "out"
    common = ("--source", "folder", "--input", tmp_path / "imgs", "--test-fraction", 0.5, "--out", out)
    run(*common, "--rows-per-shard", 1, "--preview", 2)
    assert len(shards.list_shards(str(out))) == 6 and (out / "preview.png").exists()
    (out / "train" / "notes.txt").write_text("mine")
    pq.write_table(pa.table({"x": [1, 2]}), out / "train" / "my.parquet")  # a Parquet file of the user's
    (out / "README.md").write_text("my notes")
    (out / "test" / "photo.png").write_bytes((tmp_path / "imgs" / "img0.png").read_bytes())
    users = _bytes_of([out / "train" / "notes.txt", out / "train" / "my.parquet", out / "README.md",
                       out / "test" / "photo.png"])
    summary = run(*common, "--overwrite")  # one file per split now: the old part-00001... must go
    assert _bytes_of(users) == users
    assert sorted(os.listdir(out / "train")) == ["my.parquet", "notes.txt", "part-00000.parquet"]
    assert sorted(os.listdir(out / "test")) == ["part-00000.parquet", "photo.png"]
    assert not (out / "preview.png").exists()  # a side file of the old run, not asked for this time
    new = list(shards.iter_rows([str(out / s / "part-00000.parquet") for s in ("train", "test")]))
    assert len(new) == summary["images"] == 6
    shards.require_prepared(str(out))


def test_overwrite_refuses_a_foreign_file_named_like_a_shard(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _pngs(tmp_path / "imgs", 4, 0)
    out = tmp_path / "out"
    common = ("--source", "folder", "--input", tmp_path / "imgs", "--out", out)
    run(*common)
    pq.write_table(pa.table({"x": [1]}), out / "test" / "part-00009.parquet")
    before = _all_files(out)
    with pytest.raises(FileExistsError, match=r"part-00009.parquet is named like a shard but is not a dae shard"):
        run(*common, "--overwrite")
    assert _all_files(out) == before  # refused before anything was deleted or written
    shards.require_prepared(str(out))


def test_markers_first_and_last(tmp_path, monkeypatch):
    """The started marker before anything is deleted or written, the old completion marker deleted next,
    the new one written last (after the shards, side files, config.resolved.json and summary.json)."""
    from dae import storage

    _pngs(tmp_path / "imgs", 4, 0)
    out = tmp_path / "out"
    common = ("--source", "folder", "--input", tmp_path / "imgs", "--out", out, "--preview", 2)
    run(*common)
    events = []
    write, delete = storage.write_bytes, storage.delete
    monkeypatch.setattr(storage, "write_bytes", lambda p, d: (events.append(("w", os.path.relpath(p, out))),
                                                              write(p, d)))
    monkeypatch.setattr(storage, "delete", lambda p: (events.append(("d", os.path.relpath(p, out))), delete(p)))
    run(*common, "--overwrite")
    assert events[:2] == [("w", "_prepare_started.json"), ("d", "_prepared.json")]
    assert events[-1] == ("w", "_prepared.json")
    done = {e[1] for e in events[:-1]}
    assert {"summary.json", "config.resolved.json", "preview.png", os.path.join("train", "part-00000.parquet")} <= done
    marker = json.loads((out / "_prepared.json").read_text())
    assert marker["images"] == 4 and marker["source"].startswith("folder:") and marker["finished_at"]


# A prepare in a child process that dies (os._exit: no cleanup, like a kill) at a chosen point.
KILLED_PREPARE = """
import os, sys
from dae import shards, storage
from jobs import prepare

if sys.argv[1] == "after-first-shard":
    flush = shards.ShardWriter.flush
    def flush_then_die(self):
        flush(self)
        if self.files:
            os._exit(3)
    shards.ShardWriter.flush = flush_then_die
else:  # "deleting-shards": the first old shard --overwrite deletes
    delete = storage.delete
    def die_on_shard(path):
        if str(path).endswith(".parquet"):
            os._exit(3)
        delete(path)
    storage.delete = die_on_shard
prepare.main(prepare.get_args_parser().parse_args(sys.argv[2:]))
"""


def _killed_prepare(point: str, *argv) -> None:
    p = subprocess.run([sys.executable, "-c", KILLED_PREPARE, point, *map(str, argv)], cwd=REPO, env=job_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 3, tail(p)


def _refused(root) -> str:
    with pytest.raises(ValueError, match=r"prepare did not finish \(started at \S+, no completion marker\): "
                                         r"rerun jobs.prepare with --overwrite") as e:
        shards.require_prepared(str(root))
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_prepare_killed_half_way_is_refused_until_rerun(tmp_path):
    from dae.evaluate import EvaluateConfig, check_config

    _pngs(tmp_path / "imgs", 6, 0)
    out = tmp_path / "out"
    common = ("--source", "folder", "--input", tmp_path / "imgs", "--test-fraction", 0.5, "--rows-per-shard", 1,
              "--out", out)
    _killed_prepare("after-first-shard", *common)
    assert len(shards.list_shards(str(out))) == 1  # 1 of 6 images: nothing says so but the markers
    assert _refused(out).startswith(f"{out}: ")
    _refused(out / "train")  # a split folder: judged by its root's markers
    with pytest.raises(ValueError, match="prepare did not finish"):
        check_config(EvaluateConfig(data=str(out), out=str(tmp_path / "eval"), noise=("gaussian:0.1",)))
    summary = run(*common, "--overwrite")
    assert summary["images"] == 6
    shards.require_prepared(str(out))
    shards.require_prepared(str(out / "train"))


def test_a_kill_while_overwrite_deletes_leaves_a_refused_root(tmp_path):
    _pngs(tmp_path / "imgs", 6, 0)
    out = tmp_path / "out"
    common = ("--source", "folder", "--input", tmp_path / "imgs", "--test-fraction", 0.5, "--rows-per-shard", 1,
              "--out", out)
    run(*common)
    old = file_digests(out)
    _killed_prepare("deleting-shards", *common, "--overwrite")
    assert file_digests(out) == old  # the old shards are all there, but the root no longer says it is finished
    _refused(out)
    run(*common, "--overwrite")
    shards.require_prepared(str(out))


def test_require_prepared_passes_shards_written_without_prepare(tiny_shards):
    root = tiny_shards(n_train=3, n_test=2)
    shards.require_prepared(root)
    shards.require_prepared(os.path.join(root, "train"))
    shards.require_prepared(shards.list_shards(root, "test")[0])
