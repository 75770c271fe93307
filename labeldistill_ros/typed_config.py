"""Typed dataclass configurations from YAML: the one loader behind the model, data and training configs.

A YAML mapping maps one-to-one onto a (nested) dataclass. :func:`build` checks every key against the dataclass
fields and converts every value to the annotated type, raising the caller's error class with the source, the
offending key path (``depth_net.num_bins``) and the fix (a "did you mean" for misspelt keys, the expected type
for wrong values). Semantic checks (ranges, consistency) stay with each config.

Supported annotations: ``bool``, ``int``, ``float`` (ints accepted), ``str`` (paths accepted), ``dict``, nested
dataclasses, ``tuple[T, ...]``, fixed ``tuple[A, B]`` and ``Optional[T]`` / ``T | None``.

    cfg = build(ModelConfig, read_yaml(path, ConfigError, "model config"), source=str(path), error=ConfigError)
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

__all__ = ["build", "read_yaml", "to_plain"]


def read_yaml(path: str | Path, error: type[Exception], what: str) -> Any:
    """``yaml.safe_load`` of ``path``; an unreadable file or invalid YAML raises ``error`` naming ``what``.
    An empty file reads as ``{}``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e}") from e
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from e
    return {} if data is None else data


def build(cls, data: Any, *, source: str, error: type[Exception], prefix: str = "",
          skip: tuple[str, ...] = ()):
    """Instantiate dataclass ``cls`` from the mapping ``data``.

    Args:
        source: where the data came from (a file path or ``"<dict>"``); starts every message.
        error: exception class raised for every problem (the caller's config error).
        prefix: key path of ``data`` inside the whole config (``"stages.teacher."``), for messages.
        skip: field names that are not YAML keys (set by the loader itself).
    """
    if not isinstance(data, dict):
        where = f"'{prefix[:-1]}'" if prefix else "the top level"
        raise error(f"{source}: {where} must be a mapping of {cls.__name__} settings, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise error(f"{source}: unknown key '{prefix}{key}'{hint} (valid keys here: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise error(f"{source}: missing required key '{prefix}{name}'")
            continue
        kwargs[name] = _coerce(data[name], hints[name], source, error, prefix + name)
    return cls(**kwargs)


def to_plain(cfg, drop: tuple[str, ...] = ()) -> dict:
    """Plain data (lists instead of tuples) that :func:`build` reads back to an equal config; ``drop`` removes
    top-level fields that are not YAML keys."""

    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    d = plain(dataclasses.asdict(cfg))
    for k in drop:
        d.pop(k, None)
    return d


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value, tp, source: str, error: type[Exception], key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], source, error, key)
        if not all(a in (bool, int, float, str) for a in inner):  # pragma: no cover - no config uses one
            raise error(f"{source}: '{key}': unsupported type {_type_name(tp)}")
        for a in inner:  # a union of scalars (e.g. bool | str for true / false / auto): the first that takes it
            try:
                return _coerce(value, a, source, error, key)
            except error:
                continue
        raise error(f"{source}: '{key}' must be {' or '.join(_type_name(a) for a in inner)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, source=source, error=error, prefix=key + ".")
    if tp is dict:
        if not isinstance(value, dict):
            raise error(f"{source}: '{key}' must be a mapping, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise error(f"{source}: '{key}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], source, error, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise error(f"{source}: '{key}' must have {len(args)} entries, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, source, error, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise error(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, Path)):
            raise error(f"{source}: '{key}' must be a string, got {value!r}")
        return str(value)
    raise error(f"{source}: '{key}': unsupported type {_type_name(tp)}")  # pragma: no cover
