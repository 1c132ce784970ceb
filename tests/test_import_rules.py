"""The import rule: only addon.py modules, the chain/ package and gateway.py may import mitmproxy.

Everything else is pure: testable without a proxy, and usable by the CLI, which
must start fast and never load mitmproxy. The static test reads the source (so a
lazy import inside a function counts too); the subprocess tests check what
really ends up in sys.modules.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ADDONS = Path(__file__).resolve().parent.parent / "addons"
PACKAGE = "pangate"
FORBIDDEN = "mitmproxy"


def module_name(path: Path, root: Path = ADDONS) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def may_import_mitmproxy(name: str) -> bool:
    parts = name.split(".")
    return parts[-1] == "addon" or name == f"{PACKAGE}.gateway" or parts[1:2] == ["chain"]


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, name: str, modules: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, at any depth, but not `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            for alias in node.names:  # `from pangate.x import y`: y may be a module
                if f"{target}.{alias.name}" in modules:
                    out.append((f"{target}.{alias.name}", node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    # Importing a.b.c runs a/__init__ and a/b/__init__ first.
    expanded = []
    for target, line in out:
        parts = target.split(".")
        expanded += [(".".join(parts[:i]), line) for i in range(1, len(parts) + 1)]
    return expanded


def import_graph(root: Path = ADDONS) -> tuple[dict[str, list[tuple[str, int]]], dict[str, Path]]:
    files = {module_name(p, root): p for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    modules = set(files)
    return {name: imports_of(path, name, modules) for name, path in files.items()}, files


def mitmproxy_path(start: str, graph: dict[str, list[tuple[str, int]]]) -> list[tuple[str, int]] | None:
    """The import chain from `start` to mitmproxy, as (module, line) steps, or None."""
    seen = {start}
    stack = [(start, [])]
    while stack:
        mod, path = stack.pop()
        for target, line in graph.get(mod, ()):
            step = path + [(target, line)]
            if target == FORBIDDEN or target.startswith(FORBIDDEN + "."):
                return [(start, 0)] + step
            if target in graph and target not in seen:
                seen.add(target)
                stack.append((target, step))
    return None


def violations(root: Path = ADDONS) -> list[str]:
    graph, files = import_graph(root)
    out = []
    for name in sorted(graph):
        if may_import_mitmproxy(name):
            continue
        chain = mitmproxy_path(name, graph)
        if chain:
            steps, prev = [], name
            for target, line in chain[1:]:
                steps.append(f"{prev}:{line} imports {target}")
                prev = target
            out.append(f"{files[name].relative_to(root.parent)}: " + "; ".join(steps))
    return out


def test_pure_modules_never_reach_mitmproxy():
    found = violations()
    assert not found, "pure modules that import mitmproxy (directly or through pangate modules):\n" + "\n".join(found)


def test_the_rule_sees_direct_lazy_relative_and_transitive_imports(tmp_path):
    """The checker itself: each kind of violation is caught, the allowed places are not flagged."""
    pkg = tmp_path / "addons"
    files = {
        "__init__.py": "",
        "gateway.py": "import mitmproxy\n",
        "chain/__init__.py": "",
        "chain/failsafe.py": "from mitmproxy import http\n",
        "masking/__init__.py": "",
        "masking/addon.py": "from pangate.chain.failsafe import x\n",
        "masking/pure.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mitmproxy\n",
        "pan/__init__.py": "",
        "pan/direct.py": "import mitmproxy.http\n",
        "pan/lazy.py": "def f():\n    from mitmproxy import ctx\n",
        "pan/relative.py": "from ..masking import addon\n",
        "pan/transitive.py": "from pangate.pan import relative\n",
        "pan/clean.py": "import json\nfrom pangate.masking import pure\n",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    flagged = {v.split(":")[0] for v in violations(pkg)}
    assert flagged == {f"addons/pan/{m}.py" for m in ("direct", "lazy", "relative", "transitive")}


def _python(code: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    return subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, timeout=60, env=env)


_LOADED = ("import sys; bad = sorted(m for m in sys.modules if m.split('.')[0] in {names!r}); "
           "print(' '.join(bad))")

CLI_MODULES = sorted(module_name(p) for p in (ADDONS / "cli").glob("*.py") if p.name != "__main__.py")


@pytest.mark.parametrize("module", CLI_MODULES + ["pangate.dev.demo_upstream"])
def test_cli_modules_do_not_load_mitmproxy(module):
    res = _python(f"import importlib; importlib.import_module({module!r}); " + _LOADED.format(names={"mitmproxy"}))
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode().split() == [], f"importing {module} loads {res.stdout.decode()}"


def test_every_cli_parser_without_mitmproxy():
    """`pangate --help` builds every command's parser: none of them pulls mitmproxy in."""
    res = _python("from pangate.cli.main import build_parser; build_parser(); "
                  + _LOADED.format(names={"mitmproxy"}))
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode().split() == []


@pytest.mark.parametrize("content_type", ["", "application/x-www-form-urlencoded"])
def test_pangate_mask_stays_light(content_type):
    """The filter loads no other command's module, nor mitmproxy, the token code, yaml or cryptography."""
    args = ["mask"] + (["--content-type", content_type] if content_type else [])
    heavy = {"mitmproxy", "requests", "jwt", "yaml", "cryptography"}
    res = _python(f"from pangate.cli.main import main; r = main({args!r}); import sys; "
                  "bad = sorted({m if m.startswith('pangate') else m.split('.')[0] for m in sys.modules "
                  "if m.split('.')[0] in " + repr(heavy)
                  + " or m.startswith('pangate.cli.') and m not in ('pangate.cli.main', 'pangate.cli.pan', "
                  "'pangate.cli.progress')}); print(' '.join(bad)); sys.exit(r)",
                  stdin=b"card 4111 1111 1111 1111\n")
    assert res.returncode == 0, res.stderr.decode()
    out = res.stdout.decode()
    assert "4111 11** **** 1111" in out, out
    assert out.splitlines()[-1].split() == [], f"pangate mask loads {out.splitlines()[-1]}"
