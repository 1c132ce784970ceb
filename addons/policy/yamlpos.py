"""YAML loading that remembers where every value came from.

A policy error has to name the file and line, so the loader returns dicts and
lists that carry the line of each key and item (1-based), and refuses
duplicate keys, which plain YAML silently resolves to the last one.

It is also the first thing hostile input meets, so it is bounded: a size cap
(the error names the line where the cap is passed), a cap on the number of
nodes the document expands to (aliases counted at every use, so a
billion-laughs document is refused by its node graph before anything is
built from it), and undecodable bytes are a located error, not a traceback.
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


MAX_BYTES = 8 << 20
MAX_NODES = 1_000_000


def decode(data: bytes, path: str, max_bytes: int = MAX_BYTES) -> str:
    """A policy file's bytes as text; PolicyError (with the line) if too large or not UTF-8."""
    if len(data) > max_bytes:
        line = data.count(b"\n", 0, max_bytes) + 1
        raise PolicyError(f"the policy passes {max_bytes >> 20} MB here ({len(data) / (1 << 20):.1f} MB in all): "
                          "split it or raise pangate_policy_max_mb", path, line)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise PolicyError(f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})", path, line) from None


def _check_expansion(node, path: str, max_nodes: int) -> None:
    """Refuse a document whose node graph, aliases expanded, has more than max_nodes nodes."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise PolicyError("a recursive alias", path, n.start_mark.line + 1)
        active.add(key)
        total = 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k) + size(v)
                if total > max_nodes:
                    break
        elif isinstance(n, yaml.SequenceNode):
            for v in n.value:
                total += size(v)
                if total > max_nodes:
                    break
        active.discard(key)
        if total > max_nodes:
            raise PolicyError(f"the document expands to more than {max_nodes:,} values (aliases counted at "
                              "each use): refused", path, n.start_mark.line + 1)
        sizes[key] = total
        return total

    size(node)


def load(text: str, path: str, max_nodes: int = MAX_NODES):
    """Parse YAML text; syntax errors and oversized documents become PolicyError with the line."""
    loader = _Loader(text)
    loader.path = path
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, path, max_nodes)
        return loader.construct_document(node)
    except PolicyError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise PolicyError(f"YAML syntax: {e.problem or e.context}", path, line) from None
    except yaml.YAMLError as e:
        raise PolicyError(f"YAML: {e}", path) from None
    except RecursionError:
        raise PolicyError("nested too deeply", path) from None
    finally:
        loader.dispose()
