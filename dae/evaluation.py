"""Moved to the package :mod:`dae.evaluate`; this name stays while code still imports it."""

from .evaluate import *  # noqa: F403
from .evaluate import __all__  # noqa: F401
