"""Loading a configuration: defaults, then a YAML file (and its ``base:`` chain), then ``--set``.

Loading is strict: an unknown section or key is an error that names it and the file.
``--set section.key=value`` overrides from the command line (values are parsed as YAML, so
``--set train.epochs=3`` gives an int). A config may name a ``base:`` file (relative to itself)
that it overrides, so that an ablation is a small YAML diff of the row it changes.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import yaml

from lsnet_tf.config.schema import Config, ConfigError
from lsnet_tf.utils import files


def _merge(obj, overrides: Mapping[str, Any], source: str, prefix: str = ""):
    """Return a copy of dataclass `obj` with `overrides` applied; unknown keys are errors."""
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top>'}' must be a mapping, "
                          f"got {type(overrides).__name__}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key '{prefix}{key}' (known keys: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value, source, f"{prefix}{key}.")
        else:
            changes[key] = _coerce(current, value, f"{prefix}{key}", source)
    return dataclasses.replace(obj, **changes)


def _coerce(current, value, key: str, source: str):
    """Match the type of the default value (int -> float is allowed; bool is never an int)."""
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if isinstance(current, float):
        if isinstance(value, str):  # YAML 1.1 reads "2e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if isinstance(current, str):
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def _read_yaml(path: str, seen: tuple = ()) -> dict:
    """Read a YAML config, resolving its optional `base:` chain into one nested mapping."""
    if not files.isfile(path):  # a local path or a URL (a run folder in a bucket)
        raise ConfigError(f"config file not found: {path}")
    real = path if files.is_remote(path) else os.path.realpath(path)
    if real in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        data = yaml.safe_load(files.read_text(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    base = data.pop("base", None)
    if base is None:
        return {"__source__": path, **data}
    parent = _read_yaml(os.path.join(os.path.dirname(path), base), seen + (real,))
    parent.pop("__source__", None)
    return {"__source__": path, **_deep_update(parent, data)}


def _deep_update(base: dict, new: Mapping) -> dict:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` (value as YAML) into (path, value)."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if len(path) < 2:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def load_config(path: str | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Load defaults, then the YAML file at `path` (if any), then `--set` overrides; validate."""
    cfg = Config()
    if path:
        data = _read_yaml(path)
        source = data.pop("__source__")
        cfg = _merge(cfg, data, source)
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        cfg = _merge(cfg, nested, f"--set {text}")
    return cfg.validate()
