"""YAML loading that remembers where every value came from.

A policy error has to name the file and line, so the loader returns dicts and
lists that carry the line of each key and item (1-based), and refuses
duplicate keys, which plain YAML silently resolves to the last one.
"""

from __future__ import annotations

import yaml

from pangate.policy.errors import PolicyError


class Map(dict):
    """A mapping that knows its own line and the line of each key."""

    line: int = 0
    key_lines: dict

    def line_of(self, key) -> int:
        return self.key_lines.get(key, self.line)


class Seq(list):
    """A sequence that knows its own line and the line of each item."""

    line: int = 0
    item_lines: list

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class _Loader(yaml.SafeLoader):
    path = "<policy>"


def _mapping(loader: _Loader, node: yaml.MappingNode) -> Map:
    result = Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise PolicyError("a mapping key must be a plain value", loader.path, line) from None
        if key in result:
            raise PolicyError(
                f"duplicate key {key!r} (first at line {result.key_lines[key]})", loader.path, line
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> Seq:
    result = Seq(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def load(text: str, path: str):
    """Parse YAML text; syntax errors become PolicyError with the line."""
    loader = _Loader(text)
    loader.path = path
    try:
        return loader.get_single_data()
    except PolicyError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise PolicyError(f"YAML syntax: {e.problem or e.context}", path, line) from None
    except yaml.YAMLError as e:
        raise PolicyError(f"YAML: {e}", path) from None
    finally:
        loader.dispose()
