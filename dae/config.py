"""Job configs: frozen dataclasses, filled from defaults <- YAML preset <- command-line flags.

    @dataclass(frozen=True)
    class TrainConfig:
        data: str = field(default="", metadata={"help": "shard directory or URI"})
        epochs: int = 10

    parser = argparse.ArgumentParser(); add_config_args(parser, TrainConfig)
    cfg = resolve_config(TrainConfig, parser.parse_args())   # --config PRESET, --epochs 3, ...

``--config`` takes a YAML file, a run's ``config.resolved.json`` (which reruns that run: its record
of the run under the reserved key ``_run`` is not a setting and is skipped), or the name of one of the
job's presets in ``dae/presets/`` (without ``.yaml``; a job lists only its own: ``train-*`` for
jobs.train). Every preset value must have its field's type (``overwrite: "false"`` is a string, not a
bool, and fails naming the key). Every field becomes a ``--kebab-case`` flag; dict and list fields
take YAML/JSON text (``--model-kwargs '{width: 32}'``), or space-separated words when the field's
metadata has ``nargs`` (``--noise gaussian:0.1 gaussian:0.5``); bool fields are ``--flag`` /
``--no-flag``. Unknown keys in a preset fail with the list of valid ones.

The other way round, :func:`command_line` writes the command that reruns a config; every recorded
command (reports, quality tables) comes from it, so what is recorded always parses back::

    command_line("train", TrainConfig(data="d", epochs=3))   # 'dae train --data d --epochs 3'

A config may hold one group of options picked by another of its fields (:class:`dae.prepare.PrepareConfig`:
``--source folder`` -> ``options=FolderOptions(...)``). The group's field names the picking field and
the options classes in its metadata (``options_of``, ``options``: a callable giving {value: options
dataclass or None}); flags, preset keys, :func:`build_config`, :func:`config_dict` and
:func:`command_line` see the options' fields flat, beside the config's own (``--split-dir``, not
``--options``). A value for another choice's option is an error unless it is that option's default
(a config.resolved.json of before the groups lists every option at its default).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import numbers
import os
import shlex
import typing
from typing import Any

import yaml

PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")
# The key of a config.resolved.json under which a job records what it found out about its run (data
# mode, resources, the model's config, ...): not a setting, so a preset or --config file may hold it
# and build_config skips it. Every other key of that file is a config field, at the top level.
RUN_KEY = "_run"
# The attribute of a job's parsed arguments that names its presets' prefix (add_config_args sets it).
PRESETS_ATTR = "_config_presets"


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


def field_default(f: dataclasses.Field):
    """A field's default (its factory called)."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------- settings: fields, option groups flat


def _group(cls) -> dataclasses.Field | None:
    """The field of ``cls`` holding its option group (metadata ``options_of``), if it has one."""
    return next((f for f in dataclasses.fields(cls) if "options_of" in f.metadata), None)


def _options_classes(group: dataclasses.Field) -> dict[Any, Any]:
    return group.metadata["options"]()


def settings(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
    """name -> (field, type) of every setting of config class ``cls`` (one flag and preset key each):
    its fields, with an option group's field replaced by the fields of all its options classes (each
    name once: classes may share a field of the same type and default)."""
    types = _field_types(cls)
    own = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, tuple[dataclasses.Field, Any]] = {}
    for f in dataclasses.fields(cls):
        if "options_of" not in f.metadata:
            out[f.name] = (f, types[f.name])
            continue
        for ocls in dict.fromkeys(c for c in _options_classes(f).values() if c is not None):
            otypes = _field_types(ocls)
            for of in dataclasses.fields(ocls):
                if of.name in out and (of.name in own or out[of.name][1] != otypes[of.name]
                                       or field_default(out[of.name][0]) != field_default(of)):
                    raise TypeError(f"{ocls.__name__}.{of.name} clashes with another setting of {cls.__name__}")
                out.setdefault(of.name, (of, otypes[of.name]))
    return out


def _values(cfg) -> dict[str, Any]:
    """The settings of config ``cfg`` (option group flat: the chosen options' fields), in flag order."""
    group = _group(type(cfg))
    if group is None:
        return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f is not group}
    options = getattr(cfg, group.name)
    if options is not None:
        values.update({f.name: getattr(options, f.name) for f in dataclasses.fields(options)})
    return {name: values[name] for name in settings(type(cfg)) if name in values}


def _construct(cls, values: dict[str, Any]):
    """``cls(**values)``; for a class with an option group, the values of the chosen options class
    go into it (any other option must be at its default: not silently dropped)."""
    group = _group(cls)
    if group is None:
        return cls(**values)
    fields = {f.name: f for f in dataclasses.fields(cls) if f is not group}
    own = {k: v for k, v in values.items() if k in fields}
    key = group.metadata["options_of"]
    chosen = own.get(key, field_default(fields[key]))
    ocls = _options_classes(group).get(chosen)
    mine = [f.name for f in dataclasses.fields(ocls)] if ocls is not None else []
    every = settings(cls)
    stray = [k for k, v in values.items() if k not in fields and k not in mine and v != field_default(every[k][0])]
    if stray:
        theirs = ", ".join(_flag(n) for n in mine) if mine else "none"
        raise ValueError(f"{', '.join(_flag(k) for k in stray)}: not {'an option' if len(stray) == 1 else 'options'} "
                         f"of {_flag(key)} {chosen} (its options: {theirs})")
    options = ocls(**{k: v for k, v in values.items() if k in mine}) if ocls is not None else None
    return cls(**own, **{group.name: options})


def add_config_args(parser: argparse.ArgumentParser, cls, presets: str | None = None) -> argparse.ArgumentParser:
    """``--config`` and one flag per field of ``cls``. ``presets``: the prefix of the job's preset
    names (``train`` for ``train-*``): ``--config`` lists and takes by name only those (None: all)."""
    names = list_presets(presets)
    which = f"one of this job's presets in {PRESET_DIR}" if presets is not None else f"a preset name from {PRESET_DIR}"
    parser.add_argument("--config", default=None,
                        help=f"YAML preset file (or an earlier run's config.resolved.json), or {which}: "
                             f"{', '.join(names) or 'none'}".replace("%", "%%"))
    parser.set_defaults(**{PRESETS_ATTR: presets})
    for f, tp in settings(cls).values():
        flag = _flag(f.name)
        tp = _origin(tp)
        help_text = f.metadata.get("help", "")
        # argparse %-formats help strings: a literal % (e.g. "0.2 %") would break --help
        help_text = f"{help_text} (default: {field_default(f)!r})".replace("%", "%%")
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


def list_presets(prefix: str | None = None) -> list[str]:
    """Preset names in PRESET_DIR; with ``prefix`` (a job's, e.g. ``train``), only ``PREFIX`` and ``PREFIX-*``."""
    if not os.path.isdir(PRESET_DIR):
        return []
    names = sorted(n[:-5] for n in os.listdir(PRESET_DIR) if n.endswith(".yaml"))
    return names if prefix is None else [n for n in names if n == prefix or n.startswith(prefix + "-")]


def load_preset(name_or_path: str, prefix: str | None = None) -> dict:
    """A preset's mapping, from a file (YAML, or JSON such as a config.resolved.json) or, by bare name,
    from PRESET_DIR; ``prefix``: the job's presets only (a name of another job's fails listing them)."""
    path = name_or_path
    if not os.path.exists(path):
        names = list_presets(prefix)
        if name_or_path not in names:
            whose = f"this job's presets ({prefix}-*)" if prefix is not None else "presets"
            what = ("is another job's preset" if name_or_path in list_presets() else
                    "is neither a preset file nor a preset name")
            raise ValueError(f"{name_or_path!r} {what}; {whose}: {', '.join(names) or 'none'} "
                             f"(or give a YAML file's path)")
        path = os.path.join(PRESET_DIR, f"{name_or_path}.yaml")
    with open(path) as fh:
        text = fh.read()
    try:
        # JSON first: YAML 1.1 reads JSON's 1e-05 as a string (a resolved config's lr would be one)
        data = json.loads(text)
    except ValueError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"preset {path} is not valid YAML: {' '.join(str(e).split())}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"preset {path} must be a YAML mapping, got {type(data).__name__}")
    return data


def _got(v) -> str:
    """How a wrong value is named in an error: ``the string 'false'``, ``the integer 3``, ..."""
    if v is None:
        return "null (an empty value)"
    kind = ("bool" if isinstance(v, bool) else "string" if isinstance(v, str) else
            "integer" if isinstance(v, numbers.Integral) else "number" if isinstance(v, numbers.Real) else
            "mapping" if isinstance(v, dict) else "list" if isinstance(v, (list, tuple)) else type(v).__name__)
    text = ("true" if v else "false") if isinstance(v, bool) else repr(v)
    return f"the {kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _allows_none(tp) -> bool:
    origin = typing.get_origin(tp)
    return (origin is typing.Union or str(origin) == "types.UnionType") and type(None) in typing.get_args(tp)


def _typed(f: dataclasses.Field, tp, v, where: str):
    """``v`` checked against field ``f``'s type ``tp`` (and converted: int -> float, list -> tuple,
    a path object -> str); raises a one-line ValueError naming the key, the value and the type."""
    if v is None and _allows_none(tp):
        return v
    base = _origin(tp)
    expected, ok = {
        bool: ("true or false (a YAML bool)", lambda: isinstance(v, bool)),
        int: ("an integer", lambda: _is_int(v)),
        float: ("a number", lambda: _is_number(v)),
        str: ("a string", lambda: isinstance(v, (str, os.PathLike))),
        dict: ("a mapping (YAML {key: value})", lambda: isinstance(v, dict)),
        tuple: ("a list (YAML [a, b])", lambda: isinstance(v, (list, tuple))),
        list: ("a list (YAML [a, b])", lambda: isinstance(v, (list, tuple))),
    }.get(base, (None, lambda: True))
    if _allows_none(tp) and expected:
        expected += " or null"
    if not ok():
        raise ValueError(f"{where}{f.name} must be {expected}, got {_got(v)}")
    if base is float:
        return float(v)
    if base is int:
        return int(v)
    if base is str:
        return os.fspath(v)
    if base in (tuple, list):
        words = f.metadata.get("type")  # the words' type of a nargs field, e.g. float
        if words in (int, float):
            for x in v:
                if not (_is_int(x) if words is int else _is_number(x)):
                    raise ValueError(f"{where}{f.name} must be a list of {'integers' if words is int else 'numbers'}"
                                     f", got {_got(x)} in it")
            v = [words(x) for x in v]
        return tuple(v) if base is tuple else list(v)
    return v


def build_config(cls, values: dict | None = None, preset: str | None = None, presets: str | None = None):
    """defaults <- preset <- values (None values are ignored). Every value is checked against its
    field's type (a one-line ValueError naming the key otherwise). ``preset``: a file or, by bare name,
    a preset of PRESET_DIR (``presets``: the job's prefix, ``train``: only ``train-*``); a
    config.resolved.json's record of its run (RUN_KEY) is skipped."""
    every = settings(cls)
    fields = {name: f for name, (f, _) in every.items()}
    types = {name: tp for name, (_, tp) in every.items()}
    valid = set(fields)
    merged: dict[str, Any] = {}
    if preset:
        data = {str(k).replace("-", "_"): v for k, v in load_preset(preset, presets).items() if k != RUN_KEY}
        unknown = set(data) - valid
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} in preset {preset}; valid: {', '.join(sorted(valid))}")
        merged.update({k: _typed(fields[k], types[k], v, f"preset {preset}: ") for k, v in data.items()})
    for k, v in (values or {}).items():
        if v is None:
            continue
        if k not in valid:
            raise ValueError(f"unknown config key {k!r}; valid: {', '.join(sorted(valid))}")
        merged[k] = _typed(fields[k], types[k], v, "")
    for name, f in fields.items():
        choices = f.metadata.get("choices")
        value = merged.get(name, field_default(f))
        if choices and value not in choices:
            raise ValueError(f"invalid {name} {value!r}; valid: {', '.join(map(str, choices))}")
    return _construct(cls, merged)


def resolve_config(cls, args: argparse.Namespace):
    valid = set(settings(cls))
    values = {k: v for k, v in vars(args).items() if k in valid}
    return build_config(cls, values, getattr(args, "config", None), getattr(args, PRESETS_ATTR, None))


def config_dict(cfg) -> dict:
    """The settings of ``cfg`` as a dict (an option group's fields flat, beside the config's own)."""
    if _group(type(cfg)) is None:
        return dataclasses.asdict(cfg)
    return copy.deepcopy(_values(cfg))


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


def command_line(command: str, cfg, *, full: bool = False) -> str:
    """The shell command that reruns ``cfg``: ``dae COMMAND --flag value ...`` for the fields that
    differ from the defaults (every field with ``full``), in field order, quoted with shlex. ``dae``
    is the installed command (a checkout's venv has it too), so a recorded command runs without the
    checkout; ``command`` is its name (``quality-sweep``) or the checkout's module (``jobs.quality_sweep``).

    The flags are the ones :func:`add_config_args` makes: bools as ``--flag`` / ``--no-flag``
    (argparse's BooleanOptionalAction; ``--flag True`` is rejected), dicts and lists as one line of
    YAML, fields with ``nargs`` metadata as space-separated words (``--noise gaussian:0.1 gaussian:0.5``).
    A None value is the flag's absence and is left out. Values starting with ``-`` are written
    ``--flag=value`` so argparse does not read them as an option.
    """
    from .commands import COMMANDS  # the one table of command names and their modules

    if command not in COMMANDS:
        command = {module: name for name, module in COMMANDS.items()}[command.removeprefix("jobs.")]
    every = settings(type(cfg))
    parts = ["dae", command]
    for name, value in _values(cfg).items():
        f, tp = every[name]
        if value is None or (not full and value == field_default(f)):
            continue
        flag = _flag(f.name)
        tp = _origin(tp)
        if tp is bool:
            parts.append(flag if value else "--no-" + flag[2:])
        elif f.metadata.get("nargs"):
            parts += [flag, *map(str, value)]
        else:
            text = yaml_text(value) if tp in (dict, list, tuple) else str(value)
            parts += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
    return shlex.join(parts)
