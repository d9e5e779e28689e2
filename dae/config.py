"""Job configs: frozen dataclasses, filled from defaults <- YAML preset <- command-line flags.

    @dataclass(frozen=True)
    class TrainConfig:
        data: str = field(default="", metadata={"help": "shard directory or URI"})
        epochs: int = 10

    parser = argparse.ArgumentParser(); add_config_args(parser, TrainConfig)
    cfg = resolve_config(TrainConfig, parser.parse_args())   # --config PRESET, --epochs 3, ...

``--config`` takes a YAML file or the name of a preset in ``jobs/presets/`` (without ``.yaml``).
Every field becomes a ``--kebab-case`` flag; dict and list fields take YAML/JSON text
(``--model-kwargs '{width: 32}'``), or space-separated words when the field's metadata has ``nargs``
(``--noise gaussian:0.1 gaussian:0.5``); bool fields are ``--flag`` / ``--no-flag``. Unknown keys in a
preset fail with the list of valid ones.

The other way round, :func:`command_line` writes the command that reruns a config; every recorded
command (reports, quality tables) comes from it, so what is recorded always parses back::

    command_line("jobs.train", TrainConfig(data="d", epochs=3))   # 'python -m jobs.train --data d --epochs 3'
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import typing
from typing import Any

import yaml

PRESET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs", "presets")


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _origin(tp) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _origin(args[0]) if args else str
    return origin or tp


def _yaml_value(text: str):
    return yaml.safe_load(text)


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_args(parser: argparse.ArgumentParser, cls) -> argparse.ArgumentParser:
    parser.add_argument("--config", default=None,
                        help=f"YAML preset file, or a preset name from {PRESET_DIR}: "
                             f"{', '.join(list_presets()) or 'none'}")
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        flag = _flag(f.name)
        tp = _origin(types[f.name])
        help_text = f.metadata.get("help", "")
        # argparse %-formats help strings: a literal % (e.g. "0.2 %") would break --help
        help_text = f"{help_text} (default: {_default(f)!r})".replace("%", "%%")
        choices = f.metadata.get("choices")
        if tp is bool:
            parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                                help=help_text)
        elif f.metadata.get("nargs"):
            parser.add_argument(flag, dest=f.name, default=None, nargs=f.metadata["nargs"], help=help_text,
                                type=f.metadata.get("type"))  # the words' type (str when not given)
        elif tp in (dict, list, tuple):
            parser.add_argument(flag, dest=f.name, default=None, type=_yaml_value,
                                help=help_text + " [YAML]")
        else:
            parser.add_argument(flag, dest=f.name, default=None, type=tp, choices=choices, help=help_text)
    return parser


def list_presets() -> list[str]:
    if not os.path.isdir(PRESET_DIR):
        return []
    return sorted(n[:-5] for n in os.listdir(PRESET_DIR) if n.endswith(".yaml"))


def load_preset(name_or_path: str) -> dict:
    path = name_or_path
    if not os.path.exists(path):
        path = os.path.join(PRESET_DIR, f"{name_or_path}.yaml")
        if not os.path.exists(path):
            raise ValueError(f"no preset file or name {name_or_path!r}; presets: {', '.join(list_presets())}")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"preset {path} must be a YAML mapping, got {type(data).__name__}")
    return data


def build_config(cls, values: dict | None = None, preset: str | None = None):
    """defaults <- preset <- values (None values are ignored)."""
    valid = {f.name for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    if preset:
        data = {k.replace("-", "_"): v for k, v in load_preset(preset).items()}
        unknown = set(data) - valid
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} in preset {preset}; valid: {', '.join(sorted(valid))}")
        merged.update(data)
    for k, v in (values or {}).items():
        if v is None:
            continue
        if k not in valid:
            raise ValueError(f"unknown config key {k!r}; valid: {', '.join(sorted(valid))}")
        merged[k] = v
    types = _field_types(cls)
    for k, v in list(merged.items()):
        tp = _origin(types[k])
        if tp is tuple and isinstance(v, list):
            merged[k] = tuple(v)
        elif tp is float and isinstance(v, int) and not isinstance(v, bool):
            merged[k] = float(v)
    cfg = cls(**merged)
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            raise ValueError(f"invalid {f.name} {getattr(cfg, f.name)!r}; valid: {', '.join(map(str, choices))}")
    return cfg


def resolve_config(cls, args: argparse.Namespace):
    valid = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in valid}
    return build_config(cls, values, getattr(args, "config", None))


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------- config -> command line


class _FlowDumper(yaml.SafeDumper):
    """YAML flow style with double quotes where a string needs quoting: inside the single quotes
    of a shell word, YAML's own single quotes would each turn into '"'"'."""

    def choose_scalar_style(self):
        style = super().choose_scalar_style()
        return '"' if style == "'" else style


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def yaml_text(value) -> str:
    """A dict or list as one line of YAML flow text that ``--flag`` parses back to the same value
    (key order kept; floats as YAML floats: JSON's ``1e-05`` would come back from YAML as a string)."""
    return yaml.dump(_plain(value), Dumper=_FlowDumper, default_flow_style=True, sort_keys=False,
                     width=math.inf).strip()


def command_line(module: str, cfg, *, full: bool = False) -> str:
    """The shell command that reruns ``cfg``: ``python -m MODULE --flag value ...`` for the fields that
    differ from the defaults (every field with ``full``), in field order, quoted with shlex.

    The flags are the ones :func:`add_config_args` makes: bools as ``--flag`` / ``--no-flag``
    (argparse's BooleanOptionalAction; ``--flag True`` is rejected), dicts and lists as one line of
    YAML, fields with ``nargs`` metadata as space-separated words (``--noise gaussian:0.1 gaussian:0.5``).
    A None value is the flag's absence and is left out. Values starting with ``-`` are written
    ``--flag=value`` so argparse does not read them as an option.
    """
    types = _field_types(type(cfg))
    parts = ["python", "-m", module]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None or (not full and value == _default(f)):
            continue
        flag = _flag(f.name)
        tp = _origin(types[f.name])
        if tp is bool:
            parts.append(flag if value else "--no-" + flag[2:])
        elif f.metadata.get("nargs"):
            parts += [flag, *map(str, value)]
        else:
            text = yaml_text(value) if tp in (dict, list, tuple) else str(value)
            parts += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
    return shlex.join(parts)
