"""Model directories: everything needed to rebuild a trained model, and nothing executable.

    MODEL_DIR/config.json         {"model": "unet", "model_kwargs": {...}, "channels": 1,
                                   "noise": "gaussian:0.5", "data": {...}, "metrics": {...}, ...}
    MODEL_DIR/model.safetensors   the weights (safetensors: no pickle, safe to load from anywhere)

``load_model(dir)`` rebuilds the model from the directory alone. Works on local paths and URIs, and
on ``pretrained:NAME`` for the shipped models (the repository's ``models/NAME/``, each with a model
card, README.md; installed, the package's ``dae/pretrained/NAME/``): ``dae denoise --model
pretrained:gray-blind ...``; ``dae models`` lists them. The name is resolved where the model is loaded
(each Ray worker finds the models beside its own copy of the package), so it travels to a cluster as a
name, not as a path of the submitting machine.
No Ray import; torch is imported by the functions that save or load weights: the denoise job's CPU
tasks import this module (its manifest's weights digest) and never need torch.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import TYPE_CHECKING, Any

from . import storage

if TYPE_CHECKING:
    import torch

    from .models import AnySize

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
PRETRAINED = "pretrained:"
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# The shipped models: installed (a wheel, the Docker image), the package holds them as dae/pretrained/
# (pyproject.toml maps the repository's models/ there); in a checkout they are the repository's models/.
MODELS_ROOT = next((d for d in (os.path.join(_PACKAGE, "pretrained"), os.path.join(os.path.dirname(_PACKAGE), "models"))
                    if os.path.isdir(d)), os.path.join(os.path.dirname(_PACKAGE), "models"))


def list_pretrained() -> list[str]:
    """Names of the shipped models (``models/NAME/config.json``)."""
    if not os.path.isdir(MODELS_ROOT):
        return []
    return sorted(n for n in os.listdir(MODELS_ROOT) if os.path.isfile(os.path.join(MODELS_ROOT, n, CONFIG)))


def model_dir(path: str) -> str:
    """A model directory: ``path`` itself, or for ``pretrained:NAME`` the shipped ``models/NAME``."""
    path = str(path)
    if not path.startswith(PRETRAINED):
        return path
    name = path[len(PRETRAINED):]
    shipped = list_pretrained()
    if name not in shipped:
        raise ValueError(f"unknown pretrained model {name!r}; shipped: {', '.join(shipped) or 'none'} "
                         f"(in {MODELS_ROOT})")
    return os.path.join(MODELS_ROOT, name)


def _unwrap(model: torch.nn.Module) -> AnySize:
    from .models import AnySize

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
    from safetensors.torch import save as st_save

    m = _unwrap(model)
    config = {"model": m.name, "model_kwargs": m.kwargs, "channels": m.channels,
              "format": 1, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
    state = {k: v.detach().to("cpu").contiguous() for k, v in m.state_dict().items()}
    storage.write_bytes(storage.join(path, WEIGHTS), st_save(state))
    storage.write_json(storage.join(path, CONFIG), config)  # written last: its presence marks a complete dir
    return path


def load_config(path: str) -> dict:
    cfg_path = storage.join(model_dir(path), CONFIG)
    if not storage.exists(cfg_path):
        raise FileNotFoundError(f"{path} is not a model directory: no {CONFIG} in it")
    return storage.read_json(cfg_path)


def weights_digest(path: str) -> str:
    """A content hash of a model directory's weights: tells a retrained model from the one a
    report was made with, whatever the directory is called."""
    return hashlib.blake2b(storage.read_bytes(storage.join(model_dir(path), WEIGHTS)), digest_size=16).hexdigest()


def load_model(path: str, device: str | torch.device = "cpu") -> tuple[AnySize, dict]:
    """(model in eval mode on ``device``, its config) from a model directory."""
    from safetensors.torch import load as st_load

    from .models import create_model

    config = load_config(path)
    kwargs = config.get("model_kwargs", {})
    model = create_model(config["model"], channels=int(config["channels"]), **kwargs)
    state = st_load(storage.read_bytes(storage.join(model_dir(path), WEIGHTS)))
    model.load_state_dict(state)
    return model.to(device).eval(), config
