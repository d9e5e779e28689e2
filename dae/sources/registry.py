"""The registry of sources: each ``--source`` name -> how to open it, its options, its help line and
the folders it reads. A source module declares itself, next to its reader::

    @dataclass(frozen=True)
    class TorchvisionOptions:
        tv_name: str = field(default="MNIST", metadata={"help": "torchvision dataset", "choices": [...]})
        download: bool = field(default=False, metadata={"help": "torchvision: download into --input"})

    @register_source("torchvision", "torchvision --tv-name dataset in --input root", options=TorchvisionOptions,
                     inputs=lambda cfg, opts: [cfg.input or TORCHVISION_ROOT])
    def open_torchvision(cfg, opts: TorchvisionOptions) -> Prepared:
        return prepare(opts.tv_name, root=cfg.input or TORCHVISION_ROOT, download=opts.download, ...)

``cfg`` holds the prepare stage's common settings (:class:`Settings`: ``input``, ``name``, ``limit``,
``test_fraction``; it is a :class:`dae.prepare.PrepareConfig`), ``opts`` the source's own options (a
frozen dataclass; None for a source without options). Every options field is a flag of jobs.prepare
and a preset key, beside the common ones (dae.config flattens them); two sources may share a field
only with the same type and default (natural reads its sets with folder's ``parallel_min_files``).

Adding a source: one module in dae/sources/ with its reader, options and ``@register_source``, and
its import in dae/sources/__init__.py (the order of those imports is the order of ``--source``'s
choices).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from .base import Prepared


class Settings(Protocol):
    """The common settings a source is opened with (what dae.prepare.PrepareConfig has beside the
    chosen source's options)."""

    source: str
    input: str
    name: str
    limit: Optional[int]
    test_fraction: float
    options: Any


@dataclass(frozen=True)
class Source:
    name: str
    open: Callable[[Settings, Any], Prepared]  # (settings, options) -> Prepared
    help: str
    options: Optional[type] = None  # frozen dataclass of the source's own options; None: it has none
    # (settings, options) -> the folders (paths or URIs) it reads; None: --input when given, else none
    # (data bundled with a Python package).
    inputs: Optional[Callable[[Settings, Any], list[str]]] = None


SOURCES: dict[str, Source] = {}


def register_source(name: str, help: str, options: type | None = None,
                    inputs: Callable[[Settings, Any], list[str]] | None = None):
    """Decorator of a source's opener ``fn(settings, options) -> Prepared``: adds it to SOURCES."""
    if name in SOURCES:
        raise ValueError(f"source {name!r} is registered twice")
    if options is not None and not (dataclasses.is_dataclass(options) and options.__dataclass_params__.frozen):
        raise TypeError(f"source {name!r}: options must be a frozen dataclass, got {options!r}")

    def register(fn: Callable[[Settings, Any], Prepared]):
        SOURCES[name] = Source(name=name, open=fn, help=help, options=options, inputs=inputs)
        return fn

    return register


def list_sources() -> list[str]:
    return list(SOURCES)


def source_options() -> dict[str, type | None]:
    """Each source's options class (None: it has no options of its own), in registry order."""
    return {name: s.options for name, s in SOURCES.items()}


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; valid sources: {', '.join(SOURCES)}")
    return SOURCES[name]


def open_source(cfg: Settings) -> Prepared:
    """The :class:`Prepared` for ``cfg.source``, opened with ``cfg.options``."""
    return get_source(cfg.source).open(cfg, cfg.options)


def given_input(cfg: Settings, opts: Any = None) -> list[str]:
    return [cfg.input] if cfg.input else []


def input_dirs(cfg: Settings) -> list[str]:
    """The folders (local paths or URIs) ``cfg.source`` reads its images from, so that prepare can
    refuse an --out among them (an --overwrite there once deleted a user's images)."""
    source = SOURCES.get(cfg.source)
    if source is None or source.inputs is None:
        return given_input(cfg)
    return source.inputs(cfg, cfg.options)
