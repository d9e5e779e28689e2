"""The old import path of the quality sweep, now :mod:`dae.experiments.sweep` (an experiment, not a
library stage); kept until no caller names it."""

from .experiments.sweep import *  # noqa: F401,F403
from .experiments.sweep import __all__  # noqa: F401
