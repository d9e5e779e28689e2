"""The old import path of the plain reference loops, now :mod:`dae.experiments.reference`; kept until
no caller names it."""

from .experiments.reference import fashion_shards, load_split, nchw, plain_denoise, plain_train  # noqa: F401
