"""Denoising models: a registry of builders plus the zoo that fills it. Torch only, no Ray."""

from . import zoo  # noqa: F401  (registers the models)
from .registry import AnySize, create_model, list_models, model_defaults, register_model

__all__ = ["AnySize", "create_model", "list_models", "model_defaults", "register_model"]
