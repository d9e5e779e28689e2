"""Denoising models: a registry of builders plus the zoo that fills it. Torch only, no Ray."""

from .registry import AnySize, create_model, list_models, model_defaults, register_model
from . import zoo  # noqa: F401  (registers the models)

__all__ = ["AnySize", "create_model", "list_models", "model_defaults", "register_model"]
