"""Strict TOML tables: typed getters with bounds; unknown keys are errors naming the key and file.

A technician's typo must stop a program at start-up with a message that says which key in which
file is wrong, never fall back to a default. The device's ``device.config`` and the gateway's
``gateway.config`` both read their files with :class:`Section`.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any, Final

REQUIRED: Final = object()  # the default of a getter whose key must be present


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""

    def __init__(self, source: str, key: str, message: str) -> None:
        super().__init__(f"{source}: {key}: {message}")
        self.source = source
        self.key = key


class Section:
    """Typed, bounded access to one TOML table; :meth:`done` rejects keys nobody asked for."""

    def __init__(self, table: dict[str, Any], *, source: str, prefix: str = "") -> None:
        if not isinstance(table, dict):
            raise ConfigError(source, prefix or "(top)", "must be a table")
        self._t = table
        self._source = source
        self._prefix = prefix
        self._seen: set[str] = set()

    @property
    def source(self) -> str:
        return self._source

    def key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self._source, self.key(name), message)

    def has(self, name: str) -> bool:
        return name in self._t

    def _get(self, name: str, default: Any) -> Any:
        self._seen.add(name)
        if name in self._t:
            return self._t[name]
        if default is REQUIRED:
            raise self.error(name, "is required")
        return default

    def get_str(self, name: str, default: Any = REQUIRED, *, pattern: re.Pattern[str] | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
        v = self._get(name, default)
        if v is default and default is not REQUIRED:
            return v
        if not isinstance(v, str):
            raise self.error(name, f"must be a string, got {type(v).__name__}")
        if pattern is not None and not pattern.match(v):
            raise self.error(name, f"{v!r} does not match {pattern.pattern}")
        if choices is not None and v not in choices:
            raise self.error(name, f"{v!r} is not one of {', '.join(choices)}")
        return v

    def get_int(self, name: str, default: Any = REQUIRED, *, min: int | None = None, max: int | None = None) -> Any:
        v = self._get(name, default)
        if v is default and default is not REQUIRED:
            return v
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.error(name, f"must be an integer, got {type(v).__name__}")
        if (min is not None and v < min) or (max is not None and v > max):
            raise self.error(name, f"{v} is out of range [{min}, {max}]")
        return v

    def get_float(self, name: str, default: Any = REQUIRED, *, min: float | None = None,
              max: float | None = None) -> Any:
        v = self._get(name, default)
        if v is default and default is not REQUIRED:
            return v
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise self.error(name, f"must be a number, got {v!r}")
        if (min is not None and v < min) or (max is not None and v > max):
            raise self.error(name, f"{v} is out of range [{min}, {max}]")
        return float(v)

    def get_bool(self, name: str, default: Any = REQUIRED) -> Any:
        v = self._get(name, default)
        if v is default and default is not REQUIRED:
            return v
        if not isinstance(v, bool):
            raise self.error(name, f"must be true or false, got {v!r}")
        return v

    def get_list(self, name: str, default: Any = REQUIRED) -> Any:
        v = self._get(name, default)
        if v is default and default is not REQUIRED:
            return v
        if not isinstance(v, list):
            raise self.error(name, f"must be a list, got {type(v).__name__}")
        return v

    def section(self, name: str, *, optional: bool = False) -> Section | None:
        self._seen.add(name)
        if name not in self._t:
            if optional:
                return None
            raise self.error(name, "section is required")
        return Section(self._t[name], source=self._source, prefix=self.key(name))

    def sections(self, name: str) -> list[Section]:
        """An array of tables (``[[name]]``)."""
        self._seen.add(name)
        v = self._t.get(name, [])
        if not isinstance(v, list):
            raise self.error(name, "must be an array of tables ([[...]])")
        return [Section(t, source=self._source, prefix=f"{self.key(name)}[{i}]") for i, t in enumerate(v)]

    def raw(self) -> dict[str, Any]:
        """The table as parsed, every key counted as known (for sections validated elsewhere)."""
        self._seen.update(self._t)
        return dict(self._t)

    def done(self) -> None:
        unknown = sorted(set(self._t) - self._seen)
        if unknown:
            raise self.error(unknown[0], "unknown option")


def parse_toml(text: str, *, source: str) -> dict[str, Any]:
    """Parse TOML text; a syntax error (or nesting too deep to parse) is a :class:`ConfigError`."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(source, "(syntax)", str(err)) from None
    except RecursionError:
        raise ConfigError(source, "(syntax)", "nesting too deep") from None


def read_config_text(path: Path) -> str:
    """A configuration file's text; missing, unreadable or not UTF-8 is a :class:`ConfigError` naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "(file)", "not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), "(encoding)", f"not UTF-8 ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ConfigError(str(path), "(file)", f"cannot be read: {err.strerror}") from None
