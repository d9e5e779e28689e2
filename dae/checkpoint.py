"""Model directories: everything needed to rebuild a trained model, and nothing executable.

    MODEL_DIR/config.json         {"model": "unet", "model_kwargs": {...}, "channels": 1,
                                   "noise": "gaussian:0.5", "data": {...}, "metrics": {...}, ...}
    MODEL_DIR/model.safetensors   the weights (safetensors: no pickle, safe to load from anywhere)

``load_model(dir)`` rebuilds the model from the directory alone. Works on local paths and URIs.
No Ray import.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import storage
from .models import AnySize, create_model

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def _unwrap(model: torch.nn.Module) -> AnySize:
    # DDP and torch.compile wrap the module; the checkpoint holds the plain AnySize model.
    while not isinstance(model, AnySize):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected a model made by dae.models.create_model, got {type(model).__name__}")
        model = inner
    return model


def save_model(model: torch.nn.Module, path: str, **info: Any) -> str:
    """Write MODEL_DIR with the model's name, kwargs and channels plus ``info`` (noise, data,
    metrics, ...) in config.json and its weights in safetensors."""
    m = _unwrap(model)
    config = {"model": m.name, "model_kwargs": m.kwargs, "channels": m.channels,
              "format": 1, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
    state = {k: v.detach().to("cpu").contiguous() for k, v in m.state_dict().items()}
    storage.write_bytes(storage.join(path, WEIGHTS), st_save(state))
    storage.write_json(storage.join(path, CONFIG), config)  # written last: its presence marks a complete dir
    return path


def load_config(path: str) -> dict:
    cfg_path = storage.join(path, CONFIG)
    if not storage.exists(cfg_path):
        raise FileNotFoundError(f"{path} is not a model directory: no {CONFIG} in it")
    return storage.read_json(cfg_path)


def weights_digest(path: str) -> str:
    """A content hash of a model directory's weights: tells a retrained model from the one a
    report was made with, whatever the directory is called."""
    return hashlib.blake2b(storage.read_bytes(storage.join(path, WEIGHTS)), digest_size=16).hexdigest()


def load_model(path: str, device: str | torch.device = "cpu") -> tuple[AnySize, dict]:
    """(model in eval mode on ``device``, its config) from a model directory."""
    config = load_config(path)
    kwargs = config.get("model_kwargs", {})
    model = create_model(config["model"], channels=int(config["channels"]), **kwargs)
    state = st_load(storage.read_bytes(storage.join(path, WEIGHTS)))
    model.load_state_dict(state)
    return model.to(device).eval(), config
