"""The objective registry, as dae/models' for models: each objective is one class, registered with
``@register_objective`` in its own module of this package.

    from dae.objectives import get_objective, list_objectives
    objective = get_objective("n2v")(loss="mse", noise="awgn:25", epochs=10, fraction=0.02)

Names are listed in registration order (the built-ins first, in the order ``--objective`` shows them),
not sorted: ``valid: supervised, n2n, nb2nb, n2v`` reads from the simplest to the most assuming.
"""

from __future__ import annotations

_REGISTRY: dict[str, type] = {}


def register_objective(cls: type) -> type:
    """Class decorator: makes ``cls`` (an :class:`dae.objectives.base.Objective`) ``--objective cls.name``."""
    name = getattr(cls, "name", "")
    if not name:
        raise ValueError(f"objective class {cls.__name__} has no name")
    if name in _REGISTRY:
        raise ValueError(f"objective {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls


def list_objectives() -> list[str]:
    return list(_REGISTRY)


def get_objective(name: str) -> type:
    """The registered class of ``name``; unknown names fail listing the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(list_objectives())}") from None
