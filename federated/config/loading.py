"""Loading a run's configuration: defaults, then a YAML file, then dotted overrides (the command line).

Precedence (DESIGN §8): the code's defaults (mirrored, with comments, in ``configs/default.yaml``), then a
YAML file given with ``--config``, then command-line flags. YAML is read with ``yaml.safe_load``, never
anything that runs code; unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from federated.config.checks import finite_number
from federated.config.errors import ConfigError
from federated.config.run import FederatedConfig

__all__ = ["load_config", "merge"]

_T = TypeVar("_T")


def _from_mapping(cls: type[_T], data: dict[str, Any], prefix: str) -> _T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclasses; unknown keys are errors."""
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(name, f"unknown setting; allowed: {', '.join(sorted(known))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(name, "must be a mapping")
            value = _from_mapping(hint, value, f"{name}.")  # type: ignore[arg-type]
        elif hint is float and isinstance(value, int) and finite_number(value):
            value = float(value)  # (_finite_number excludes bools and ints too large for a float)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # wrong type reached a comparison inside validate()
        raise ConfigError(prefix.rstrip(".") or "config", str(exc)) from None


def merge(config: FederatedConfig, overrides: dict[str, Any]) -> FederatedConfig:
    """Return ``config`` with dotted-key ``overrides`` applied (``{"training.learning_rate": 0.1}``).

    ``None`` values are skipped (an unset command-line flag). Raises ConfigError for unknown keys or
    invalid results.
    """
    data = config.to_dict()
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *path, leaf = key.split(".")
        for depth, part in enumerate(path):
            if not isinstance(node.get(part), dict):
                name = ".".join(path[:depth + 1])
                if part in node:
                    raise ConfigError(name, "is a setting, not a section")
                raise ConfigError(name, f"unknown setting; allowed: {', '.join(sorted(node))}")
            node = node[part]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            value = _deep(node[leaf], value)  # a partial section changes only the keys it names
        node[leaf] = value
    return _from_mapping(FederatedConfig, data, "")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> FederatedConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``; validated.

    Raises ConfigError (bad or unknown field, unreadable file, invalid YAML).
    """
    config = FederatedConfig()
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError("--config", f"{path} is not UTF-8 text: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError("--config", f"{path} is not valid YAML: {exc}") from None
        if raw is not None:
            if not isinstance(raw, dict):
                raise ConfigError("--config", f"{path} must contain a mapping of settings")
            config = _from_mapping(FederatedConfig, {**config.to_dict(), **_deep(config.to_dict(), raw)}, "")
    return merge(config, overrides or {})


def _deep(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update (nested sections in a YAML file override key by key)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _deep(base[key], value)
        else:
            out[key] = value
    return out
