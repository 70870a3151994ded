"""Configuration: one dataclass per component, JSON round trip, presets.

Every component config subclasses :class:`Config`. Field types are JSON-only (str, int, float,
bool, list, dict, None and nested Configs), so a config saves next to its weights as plain JSON
and loads back with ``cls.from_dict``. Presets (``tiny`` for tests, ``default`` for 2 CPU cores,
``full`` for GPUs) are class-level dicts of overrides applied on top of the field defaults.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from invemb.io import atomic_write_text

C = TypeVar("C", bound="Config")

PRESETS = ("tiny", "default", "full")


class ConfigError(ValueError):
    """A config key or value that does not match the dataclass."""


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; parse strings from the CLI."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X] / X | None
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        return _coerce(name, non_none[0], value)
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return tp.from_dict(value)
        raise ConfigError(f"{name}: expected a mapping for {tp.__name__}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name}: expected a bool, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(name, inner, v) if inner is not Any else v for v in value]
    if origin is dict:
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        inner = args[1] if len(args) == 2 else Any
        return {k: (_coerce(f"{name}.{k}", inner, v) if inner is not Any else v) for k, v in value.items()}
    return value


@dataclasses.dataclass
class Config:
    """Base class: JSON round trip, typed overrides, presets."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} key(s): {', '.join(unknown)}")
        hints = cls._hints()
        return cls(**{k: _coerce(k, hints[k], v) for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def preset(cls: type[C], name: str = "default", **overrides: Any) -> C:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        values = dict(cls.presets.get(name, {}))
        values.update(overrides)
        return cls.from_dict(values)

    def replace(self: C, **overrides: Any) -> C:
        """A copy with typed overrides (CLI strings are parsed; dotted keys reach nested configs)."""
        data = self.to_dict()
        for key, value in overrides.items():
            target, parts = data, key.split(".")
            for p in parts[:-1]:
                if p not in target or not isinstance(target[p], dict):
                    raise ConfigError(f"unknown {type(self).__name__} key: {key}")
                target = target[p]
            if parts[-1] not in target:
                raise ConfigError(f"unknown {type(self).__name__} key: {key}")
            target[parts[-1]] = value
        return type(self).from_dict(data)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted key: value} (the keys ``replace`` and ``--set`` take)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """``["lr=1e-3", "loss.recon=0.5"]`` -> ``{"lr": "1e-3", "loss.recon": "0.5"}``."""
    out: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not KEY=VALUE")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out
