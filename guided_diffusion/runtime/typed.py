"""Typed values of a config: a YAML or command-line value converted to the type of a dataclass field
(``coerce``), a dataclass built from a nested dict strictly (``from_dict``: an unknown key or a wrong type
raises ``ConfigError`` naming the key and the closest valid one) and back (``to_dict``)."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Dict, List


class ConfigError(ValueError):
    """A configuration problem, with a message meant for the user as-is."""


# The registered sections' dataclasses by name (``sections.register_section_schema``): the names that
# ``Config``'s field types resolve to.
SCHEMA_TYPES: Dict[str, type] = {}


def field_types(cls: type) -> Dict[str, Any]:
    """The field types of dataclass ``cls`` (a registered schema's name resolved)."""
    return typing.get_type_hints(cls, localns=SCHEMA_TYPES)


def closest(key: str, options) -> str:
    """`` (did you mean 'x'?)`` for the option closest to ``key``, or ""."""
    match = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def coerce(value: Any, typ: Any, where: str) -> Any:
    """Convert a YAML or command-line value to ``typ``, or raise ConfigError naming ``where``."""
    origin = typing.get_origin(typ)
    if typ is Any:
        return value
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return coerce(value, args[0], where)
    if typ is bool:
        if isinstance(value, bool):
            return value
        # ADM's and GUIDE's str2bool spellings too (t, y, f, n), so --class_cond t works as there
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on", "t", "y"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "no", "0", "off", "f", "n"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, (list, tuple)):  # e.g. attention_resolutions: [16, 8]
            return ",".join(str(v) for v in value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if origin in (list, List):
        (inner,) = typing.get_args(typ) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # one element (`sample.compose=3` parses as the number 3)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{where}: unsupported type {typ}")


def parse_bool(value: Any, where: str) -> bool:
    """A true/false value as configs spell it (true/false, yes/no, 1/0, on/off), or ConfigError."""
    return coerce(value, bool, where)


def parse_list(text: str, typ=int) -> tuple:
    """'16,8' -> (16, 8)."""
    return tuple(typ(v) for v in str(text).split(",") if v.strip())


def from_dict(cls: type, data: Dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) dict, strictly: unknown keys and bad types raise."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown key '{path}'{closest(str(key), names)}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = from_dict(typ, value, path)
        else:
            kwargs[key] = coerce(value, typ, path)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj

