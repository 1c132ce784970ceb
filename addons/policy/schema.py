"""Typed, located reads of a policy document.

Every read names the dotted place in the document and its line, so each
validation error reads like `policies.yaml:12: roles.ci.allow[0].methods: ...`.
"""

from __future__ import annotations

import re
from typing import Any

from pangate.policy.errors import PolicyError
from pangate.policy.yamlpos import Map, Seq

_MISSING = object()
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float:
    """`30s`, `5m`, `1h`, `2d` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m, 1h")
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"expected a duration like 30s, 5m, 1h, got {value!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


class Section:
    """One mapping of the document, with its place for error messages."""

    def __init__(self, node: Any, where: str, path: str, line: int = 0):
        self.path = path
        self.where = where
        if node is None:
            node = Map()
            node.line, node.key_lines = line, {}
        if not isinstance(node, dict):
            raise PolicyError(f"{where}: expected a mapping, got {_kind(node)}", path, _line(node, line))
        self.node = node

    def error(self, key: str | None, message: str) -> PolicyError:
        where = f"{self.where}.{key}" if key is not None else self.where
        line = self.node.line_of(key) if key is not None else self.node.line
        return PolicyError(f"{where.lstrip('.')}: {message}", self.path, line)

    def keys(self, allowed: set[str], required: set[str] = frozenset(), hint: dict | None = None):
        for key in self.node:
            if key not in allowed:
                extra = (hint or {}).get(key) or f"allowed: {', '.join(sorted(allowed))}"
                raise self.error(key, f"unknown key ({extra})")
        for key in sorted(required - set(self.node)):
            raise self.error(None, f"missing required key {key!r}")
        return self

    def get(self, key: str, default: Any = _MISSING) -> Any:
        if key not in self.node:
            if default is _MISSING:
                raise self.error(None, f"missing required key {key!r}")
            return default
        return self.node[key]

    def str(self, key: str, default: Any = _MISSING, choices: tuple | None = None) -> Any:
        value = self.get(key, default)
        if value is default and key not in self.node:
            return value
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a non-empty string, got {_kind(value)}")
        if choices and value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def int(self, key: str, default: Any = _MISSING, lo: int = 0, hi: int = 2**31) -> Any:
        value = self.get(key, default)
        if key not in self.node:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.error(key, f"expected a whole number from {lo} to {hi}, got {value!r}")
        return value

    def bool(self, key: str, default: bool = False) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def duration(self, key: str, default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if key not in self.node:
            return value
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise self.error(key, str(e)) from None
        if seconds <= 0:
            raise self.error(key, "must be longer than zero")
        return seconds

    def strs(self, key: str, default: Any = _MISSING) -> Any:
        """A list of non-empty strings; a single string is taken as a list of one."""
        value = self.get(key, default)
        if key not in self.node:
            return value
        if isinstance(value, str) and value:
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(key, f"expected a list of strings, got {_kind(value)}")
        return tuple(value)

    def section(self, key: str, required: bool = False) -> Section | None:
        if key not in self.node:
            if required:
                raise self.error(None, f"missing required key {key!r}")
            return None
        return Section(self.node[key], f"{self.where}.{key}", self.path, self.node.line_of(key))

    def named(self, key: str) -> list[tuple[str, Section]]:
        """A mapping of name -> mapping, e.g. `roles: {ci: {...}}`."""
        sec = self.section(key)
        if sec is None:
            return []
        out = []
        for name in sec.node:
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]*", name):
                raise sec.error(str(name), "names use letters, digits and _ . : @ / -")
            out.append((name, Section(sec.node[name], f"{sec.where}.{name}", self.path, sec.node.line_of(name))))
        return out

    def items(self, key: str) -> list[Section]:
        """A list of mappings, e.g. `allow: [{...}, {...}]`."""
        value = self.get(key, None)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {_kind(value)}")
        line_of = value.line_of if isinstance(value, Seq) else (lambda i: self.node.line_of(key))
        return [Section(v, f"{self.where}.{key}[{i}]", self.path, line_of(i)) for i, v in enumerate(value)]

    def line(self, key: str | None = None) -> int:
        return self.node.line_of(key) if key is not None else self.node.line


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value).__mro__[-2] if type(value) in (Map, Seq) else type(value),
                                   type(value).__name__)


def _line(node: Any, default: int) -> int:
    return getattr(node, "line", default) or default
