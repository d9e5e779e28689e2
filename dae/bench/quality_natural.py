"""The old import path of the natural-photo table, now :mod:`dae.experiments.quality_natural`; kept
until no caller names it."""

from ..experiments.quality_natural import *  # noqa: F401,F403
from ..experiments.quality_natural import PUBLISHED, TRAIN, QualityNaturalConfig, check_config, markdown, ship  # noqa: F401
