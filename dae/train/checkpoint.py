"""The run's checkpoints: what one holds (:func:`save_checkpoint`), how a run continues from one
(:func:`restore`), a fine-tune's start (:func:`init_weights`), the model directories a finished run
exports (:func:`export_model`) and the settings of a run already in a run directory
(:func:`stored_run_config`).

    CHECKPOINT/model/      dae.checkpoint.save_model: weights + config.json (train_config, epoch, metrics)
    CHECKPOINT/state.pt    optimizer, schedule, epoch, steps, metric history, attempt

Rules it keeps:
  * ``model/`` stands alone: any checkpoint's model loads with dae.checkpoint.load_model;
  * a restored run is the uninterrupted run: epoch e+1 from a checkpoint of epoch e repeats it bit for
    bit; more epochs than the run started with stretch its schedule and fast-forward it;
  * what a run was trained with is its latest checkpoint's train_config (else its config.resolved.json).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import torch

from .. import checkpoint as ckpt_lib, storage
from ..config import config_dict
from .config import LoopConfig, TrainConfig
from .report import REPORTED


@dataclass
class TrainState:
    """How far a run got: saved in every checkpoint's state.pt, restored on resume."""

    epoch: int = 0  # epochs done
    steps_done: int = 0  # optimizer steps taken: where the schedule stands
    attempt: int = 0  # 0: the first worker group; +1 on every resume
    history: list = field(default_factory=list)  # metrics rows, one per epoch done


def save_checkpoint(path: str, model: torch.nn.Module, opt, sched, state: TrainState, lc: LoopConfig,
                    total_steps: int) -> None:
    """A checkpoint directory: ``model/`` (:func:`dae.checkpoint.save_model`, usable alone) and
    ``state.pt`` (optimizer, schedule, epoch and metrics history: what :func:`restore` needs)."""
    cfg, row = lc.cfg, state.history[-1]
    ckpt_lib.save_model(model, os.path.join(path, "model"), noise=str(cfg.noise_spec), epoch=state.epoch,
                        metrics={k: row[k] for k in REPORTED[1:-1] if k in row},
                        data={"root": cfg.data, "train_split": cfg.train_split, "val_split": cfg.val_split,
                              "size": list(lc.size)},
                        run_name=cfg.run_name, train_config=config_dict(cfg))
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": state.epoch,
                "steps_done": state.steps_done, "total_steps": total_steps, "schedule": cfg.schedule,
                "history": state.history, "attempt": state.attempt}, os.path.join(path, "state.pt"))


def restore(path: str, model: torch.nn.Module, opt, sched, cfg: TrainConfig, total_steps: int) -> TrainState:
    """Loads a :func:`save_checkpoint` directory into the model, optimizer and schedule; returns
    the run's state as the next attempt."""
    loaded, mcfg = ckpt_lib.load_model(os.path.join(path, "model"))
    if mcfg["model"] != cfg.model or mcfg.get("model_kwargs", {}) != model.kwargs:
        raise ValueError(f"run {cfg.run_name!r} holds a {mcfg['model']} {mcfg.get('model_kwargs')} checkpoint, "
                         f"but the config asks for {cfg.model} {cfg.model_kwargs}; use another --run-name")
    model.load_state_dict(loaded.state_dict())
    saved = torch.load(os.path.join(path, "state.pt"), weights_only=True, map_location="cpu")
    opt.load_state_dict(saved["optimizer"])
    if saved.get("total_steps") == total_steps and saved.get("schedule") == cfg.schedule:
        sched.load_state_dict(saved["scheduler"])
    else:
        # More epochs (or another batch size) than the run was started with: the same schedule
        # stretched to the new length, fast-forwarded to the steps already taken. From the base lr:
        # the optimizer state holds the old schedule's last lr (~0 at a cosine's end), and cosine
        # steps are relative to the current lr, so they would stay there.
        for group in opt.param_groups:
            group["lr"] = group.get("initial_lr", cfg.lr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(min(int(saved["steps_done"]), total_steps - 1)):
                sched.step()
    return TrainState(epoch=int(saved["epoch"]), steps_done=int(saved["steps_done"]),
                      attempt=int(saved["attempt"]) + 1, history=list(saved["history"]))


def init_weights(model: torch.nn.Module, path: str) -> None:
    """Loads a model directory's weights (safetensors) into ``model``, which must be the same network."""
    loaded, mcfg = ckpt_lib.load_model(path)
    if int(mcfg["channels"]) != model.channels:
        raise ValueError(f"--init {path} takes {mcfg['channels']}-channel images, the data has {model.channels}")
    model.load_state_dict(loaded.state_dict())


def export_model(checkpoint, model_dir: str) -> torch.nn.Module:
    """Copies a Ray Train checkpoint's model/ (weights + config) to ``model_dir``; returns the model."""
    with checkpoint.as_directory() as d:
        model, mcfg = ckpt_lib.load_model(os.path.join(d, "model"))
    ckpt_lib.save_model(model, model_dir, **{k: v for k, v in mcfg.items()
                                             if k not in ("model", "model_kwargs", "channels", "format", "saved_at")})
    return model


def stored_run_config(run_dir: str) -> tuple[dict, str] | None:
    """(train config, where it was read) of the run already in ``run_dir``, or None: the latest
    checkpoint's train_config (what its weights were trained with), else the run's config.resolved.json."""
    if not storage.is_dir(run_dir):
        return None
    found = []
    for path in storage.list_files(run_dir, suffix=ckpt_lib.CONFIG, recursive=True):
        parts = path.replace("\\", "/").split("/")
        if len(parts) >= 3 and parts[-2] == "model" and parts[-3].startswith("checkpoint_"):
            mcfg = storage.read_json(path)
            if isinstance(mcfg.get("train_config"), dict):
                found.append((int(mcfg.get("epoch") or 0), parts[-3], mcfg["train_config"], path))
    if found:
        *_, train_config, path = max(found, key=lambda t: (t[0], t[1]))
        return train_config, path
    resolved = storage.join(run_dir, "config.resolved.json")
    if storage.exists(resolved):
        return storage.read_json(resolved), resolved
    return None
