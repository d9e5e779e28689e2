"""Job configs (dae.config): preset values are checked against their fields' types, a run's
config.resolved.json given back to ``--config`` reruns that run, and each job lists and takes by name
only its own presets."""

import dataclasses
import importlib
import json
import re
import subprocess
import sys

import pytest

from dae.config import RUN_KEY, build_config, list_presets, resolve_config
from dae.denoise.config import DenoiseConfig
from dae.evaluate import EvaluateConfig
from dae.jobutil import save_resolved_config
from dae.prepare import PrepareConfig
from dae.train import TrainConfig, check_config
from helpers import REPO, job_env, tail


def write_preset(tmp_path, text: str, name: str = "my.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- typed presets


@pytest.mark.parametrize("cls, text, says", [
    # a YAML string is not a bool: it once read as true (and a denoise run wiped its outputs)
    (DenoiseConfig, 'overwrite: "false"\n', "overwrite must be true or false (a YAML bool), got the string 'false'"),
    (PrepareConfig, "overwrite: 'no'\n", "overwrite must be true or false (a YAML bool), got the string 'no'"),
    # once a traceback deep in the training loop
    (TrainConfig, 'epochs: "3"\n', "epochs must be an integer, got the string '3'"),
    (TrainConfig, "epochs: true\n", "epochs must be an integer, got the bool true"),
    (TrainConfig, "epochs: 2.5\n", "epochs must be an integer, got the number 2.5"),
    (TrainConfig, 'lr: "1e-3"\n', "lr must be a number, got the string '1e-3'"),
    (TrainConfig, "noise: 25\n", "noise must be a string, got the integer 25"),
    (TrainConfig, "model_kwargs: width\n", "model_kwargs must be a mapping (YAML {key: value}), got the string"),
    (TrainConfig, "init:\n", "init must be a string, got null"),
    (EvaluateConfig, "noise: gaussian:0.1\n", "noise must be a list (YAML [a, b]), got the string 'gaussian:0.1'"),
    (PrepareConfig, 'limit: "5"\n', "limit must be an integer or null, got the string '5'"),
])
def test_a_preset_value_of_the_wrong_type_is_a_one_line_error(tmp_path, cls, text, says):
    path = write_preset(tmp_path, text)
    with pytest.raises(ValueError) as e:
        build_config(cls, preset=path)
    assert str(e.value).startswith(f"preset {path}: {says}"), e.value
    assert "\n" not in str(e.value)


def test_values_from_code_are_checked_too_and_right_types_pass(tmp_path):
    with pytest.raises(ValueError, match=r"^epochs must be an integer, got the string '3'$"):
        build_config(TrainConfig, {"epochs": "3"})
    # the right types pass; ints are numbers, lists are tuples, null is an Optional's value
    path = write_preset(tmp_path, "lr: 1\nepochs: 3\naugment: false\nmodel_kwargs: {width: 8}\n")
    cfg = build_config(TrainConfig, preset=path)
    assert (cfg.lr, cfg.epochs, cfg.augment, cfg.model_kwargs) == (1.0, 3, False, {"width": 8})
    assert isinstance(cfg.lr, float)
    path = write_preset(tmp_path, "source: idx\nlimit: null\n", "n.yaml")
    assert build_config(PrepareConfig, preset=path).limit is None
    assert build_config(EvaluateConfig, {"noise": ["gaussian:0.1"], "ensemble": [1, 8]}).ensemble == (1, 8)
    # flags come typed from argparse already, and pass
    from jobs.train import get_args_parser

    args = get_args_parser().parse_args(["--data", "d", "--epochs", "3", "--lr", "1e-3", "--no-augment",
                                         "--model-kwargs", "{width: 8}", "--config", "train-quick"])
    cfg = resolve_config(TrainConfig, args)
    assert (cfg.epochs, cfg.lr, cfg.augment, cfg.model_kwargs) == (3, 1e-3, False, {"width": 8})


def test_the_job_cli_says_which_preset_value_is_wrong_in_one_line(tmp_path):
    path = write_preset(tmp_path, 'overwrite: "false"\ndevice: cpu\n')
    p = subprocess.run([sys.executable, "-m", "jobs.denoise", "--config", path, "--input", str(tmp_path / "in"),
                        "--model", str(tmp_path / "m"), "--output", str(tmp_path / "out")],
                       cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, tail(p)
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, tail(p)
    assert f"preset {path}: overwrite must be true or false (a YAML bool), got the string 'false'" in p.stderr, tail(p)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- config.resolved.json given back


def _settings_of(cfg) -> dict:
    """A config's fields, and those of the options it holds (PrepareConfig.options), in one flat dict."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out.update(_settings_of(value) if dataclasses.is_dataclass(value) else {f.name: value})
    return out


def _stage_configs():
    return [
        # a source's own options (PrepareConfig.options) are settings at the top level too
        ("prepare", PrepareConfig.from_flat(source="natural", input="in", out="o", limit=5, test_fraction=0.25,
                                            overwrite=True, sets=("train=Train400",), preview=3, files_per_task=8),
         {"host": "laptop", "seconds": 1.5}),
        ("train", check_config(TrainConfig(data="shards", model="dncnn", model_kwargs={"depth": 5, "width": 16},
                                           noise="gaussian:0.05-0.6", lr=1e-5, weight_decay=1e-4, epochs=3,
                                           augment=False, crop=16, run_name="r", torch_threads=0)),
         # what run() records; torch_threads is also a field: the record must not replace the setting
         {"data_mode": "cache", "resources": {"cpus_per_worker": 1.0, "cluster": "2 CPU/0 GPU"}, "torch_threads": 2,
          "train_rows": 10, "val_rows": 4, "run_dir": "/runs/r"}),
        # what denoise's pipeline records: model_config and fingerprint, once "unknown key(s)" to --config
        ("denoise", DenoiseConfig(input="in", model="m", output="o", add_noise="gaussian:0.5", sigma=25.0,
                                  overwrite=True, precision="fp32", ensemble=8, max_error_fraction=0.01),
         {"model_config": {"model": "unet", "model_kwargs": {"width": 16}, "channels": 1}, "fingerprint": "f00d"}),
        ("evaluate", EvaluateConfig(data="d", out="o", noise=("gaussian:0.1", "salt_pepper:0.2"), models=("m1", "m 2"),
                                    ensemble=(1, 8), baselines=("median",), limit=3),
         {"command": "python -m jobs.evaluate"}),
    ]


@pytest.mark.parametrize("job, cfg, extra", _stage_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_resolved_config_given_back_reruns_the_same_config(tmp_path, job, cfg, extra):
    path = save_resolved_config(cfg, str(tmp_path), **extra)
    saved = json.loads(open(path).read())
    # the fields at the top level (readers take them there), the run's record under one key
    assert {k: v for k, v in saved.items() if k != RUN_KEY} == json.loads(json.dumps(_settings_of(cfg)))
    assert saved.get(RUN_KEY, {}) == json.loads(json.dumps(extra))
    assert build_config(type(cfg), preset=path) == cfg
    # and through the job's own --config, with a flag over it
    parser = importlib.import_module(f"jobs.{job}").get_args_parser()
    assert resolve_config(type(cfg), parser.parse_args(["--config", path])) == cfg
    over = resolve_config(type(cfg), parser.parse_args(["--config", path, "--out" if job != "denoise" else "--output",
                                                        "elsewhere"]))
    assert getattr(over, "out" if job != "denoise" else "output") == "elsewhere"


def test_a_checked_train_config_given_back_checks_to_itself(tmp_path):
    """check_config makes paths absolute: the resolved file holds those, and they check the same."""
    cfg = check_config(TrainConfig(data="shards", storage="runs", run_name="r"))
    back = build_config(TrainConfig, preset=save_resolved_config(cfg, str(tmp_path), data_mode="cache"))
    assert check_config(back) == cfg


# ---------------------------------------------------------------- each job's presets


JOB_PRESETS = [("train", "train"), ("denoise", "denoise"), ("prepare", "prepare"), ("evaluate", "evaluate"),
               ("quality_sweep", "quality-sweep")]


@pytest.mark.parametrize("job, prefix", JOB_PRESETS)
def test_each_jobs_config_help_lists_only_its_presets(job, prefix):
    parser = importlib.import_module(f"jobs.{job}").get_args_parser()
    text = next(a for a in parser._actions if a.dest == "config").help
    mine = [n for n in list_presets() if n == prefix or n.startswith(prefix + "-")]
    assert mine
    for name in list_presets():
        listed = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None
        assert listed == (name in mine), (name, text)


def test_an_unknown_or_other_jobs_preset_name_lists_this_jobs_presets(tmp_path):
    from jobs.train import get_args_parser

    parser = get_args_parser()
    for name, says in (("train-nope", "is neither a preset file nor a preset name"),
                       ("denoise-gpu", "is another job's preset")):
        with pytest.raises(ValueError) as e:
            resolve_config(TrainConfig, parser.parse_args(["--config", name]))
        msg = str(e.value)
        assert says in msg and "train-quick" in msg and "train-fashion" in msg, msg
        assert "denoise-local" not in msg and "prepare-" not in msg, msg
    # a file path works whatever its name
    path = write_preset(tmp_path, "epochs: 4\n", "denoise-gpu.yaml")
    assert resolve_config(TrainConfig, parser.parse_args(["--config", path])).epochs == 4
