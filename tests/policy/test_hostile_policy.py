"""Hostile or huge policy files are refused with file and line, quickly and without a blow-up."""

from __future__ import annotations

import resource
import time

import pytest

from pangate.policy.model import load_policy, parse_policy
from pangate.policy.errors import PolicyError


def _laughs(levels: int = 12) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "version: 1\nsettings:\n  x:\n" + "\n".join("    " + x for x in lines) + "\n"


def test_alias_bomb_is_refused_fast_with_its_line():
    t0 = time.monotonic()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(PolicyError) as e:
        parse_policy(_laughs(), "bomb.yaml")
    assert time.monotonic() - t0 < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 100_000  # KiB
    assert str(e.value).startswith("bomb.yaml:") and e.value.line and "expands" in str(e.value)
    assert len(str(e.value)) < 300  # the error does not render the structure


def test_recursive_alias_is_refused():
    with pytest.raises(PolicyError):
        parse_policy("version: 1\nsettings: &s\n  self: *s\n", "rec.yaml")


def test_binary_garbage_is_a_located_error(tmp_path):
    p = tmp_path / "garbage.yaml"
    p.write_bytes(b"version: 1\nroles:\n  a: \xff\xfe\x00junk\n")
    with pytest.raises(PolicyError) as e:
        load_policy(str(p))
    assert e.value.line == 3 and "UTF-8" in str(e.value) and str(p) in str(e.value)


def test_oversized_policy_is_refused_at_the_line_where_it_passes_the_cap(tmp_path):
    p = tmp_path / "huge.yaml"
    line = "  svc-%06d: {issuer: pangate, roles: [r]}\n"
    p.write_text("version: 1\nidentities:\n" + "".join(line % i for i in range(330_000)))
    assert p.stat().st_size > 8 << 20
    t0 = time.monotonic()
    with pytest.raises(PolicyError) as e:
        load_policy(str(p))
    assert time.monotonic() - t0 < 2 and e.value.line and e.value.line > 100_000 and "MB" in str(e.value)
