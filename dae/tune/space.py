"""A search space in YAML, checked against the train stage's settings before any trial runs.

    space:
      lr: {loguniform: [0.0003, 0.003]}
      model_kwargs.width: {choice: [16, 24, 32]}   # a dotted key sets one keyword of a dict setting
      crop: {choice: [48, 64, 96]}
      schedule: cosine                              # a plain value: fixed for every trial

Rules:
- A key is a :class:`dae.train.TrainConfig` field, or ``FIELD.KEY`` for a dict field (model_kwargs,
  objective_kwargs); anything else fails naming the valid fields. The settings a tune run owns (data,
  epochs, run name, storage, workers, CPUs) cannot be searched.
- A value is one of ``{choice: [..]}``, ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``,
  ``{randint: [lo, hi]}`` (hi excluded), or a plain value; every choice and both ends are checked
  as the setting's type (``lr: {choice: [fast]}`` fails before any trial).
- No Ray here: :func:`to_tune` turns a checked space into Ray Tune's domains when a tune run starts.
"""

from __future__ import annotations

import dataclasses

KINDS = ("choice", "uniform", "loguniform", "randint")
# Set by the tune run itself, never searched: the data, how long (ASHA's max_t), names and resources.
OWNED = ("data", "epochs", "run_name", "storage", "out", "workers", "cpus_per_worker", "gpus_per_worker",
         "torch_threads", "samples")


def _fields() -> dict[str, dataclasses.Field]:
    from ..train import TrainConfig

    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _check_value(key: str, value, where: str) -> None:
    from ..config import build_config
    from ..train import TrainConfig

    field, _, sub = key.partition(".")
    values = {field: {sub: value}} if sub else {field: value}
    try:
        build_config(TrainConfig, values)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None


def check(space: dict, where: str = "search space") -> dict:
    """The space, each key and value checked (see the module's rules); returns it."""
    if not isinstance(space, dict) or not space:
        raise ValueError(f"{where}: give a mapping of settings to search, e.g. {{lr: {{loguniform: [1e-4, 1e-2]}}}}")
    fields = _fields()
    for key, value in space.items():
        field, dot, sub = str(key).partition(".")
        valid = sorted(set(fields) - set(OWNED))
        if field in OWNED:
            raise ValueError(f"{where}: {field!r} is set by the tune run, not searched; searchable: {', '.join(valid)}")
        if field not in fields:
            raise ValueError(f"{where}: unknown setting {field!r}; searchable: {', '.join(valid)}")
        if dot and not (sub and fields[field].type in ("dict", dict)):
            raise ValueError(f"{where}: {key!r}: only a dict setting (model_kwargs, objective_kwargs) takes FIELD.KEY")
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in KINDS:
            kind, args = next(iter(value.items()))
            if not isinstance(args, list) or not args or (kind != "choice" and len(args) != 2):
                raise ValueError(f"{where}: {key}: {kind} takes " + ("a list of values" if kind == "choice" else
                                                                     "[low, high]") + f", got {args!r}")
            if kind != "choice" and not args[0] < args[1]:
                raise ValueError(f"{where}: {key}: {kind} needs low < high, got {args!r}")
            for v in args:
                _check_value(str(key), v, f"{where}: {key}")
        elif isinstance(value, dict) and len(value) == 1 and not dot and fields[field].type not in ("dict", dict):
            raise ValueError(f"{where}: {key}: unknown kind {next(iter(value))!r}; valid: {', '.join(KINDS)}")
        else:
            _check_value(str(key), value, f"{where}: {key}")
    return space


def to_tune(space: dict) -> dict:
    """Ray Tune's param_space for a checked space (keys kept flat; :func:`overrides` nests them)."""
    from ray import tune

    out = {}
    for key, value in space.items():
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in KINDS:
            kind, args = next(iter(value.items()))
            out[key] = (tune.choice(list(args)) if kind == "choice" else tune.uniform(*args) if kind == "uniform"
                        else tune.loguniform(*args) if kind == "loguniform" else tune.randint(*args))
        else:
            out[key] = value
    return out


def overrides(base: dict, sampled: dict) -> dict:
    """TrainConfig values: ``base`` with a trial's ``sampled`` values (dotted keys into their dicts)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in sampled.items():
        field, dot, sub = key.partition(".")
        if dot:
            out[field] = {**out.get(field, {}), sub: value}
        else:
            out[field] = value
    return out
