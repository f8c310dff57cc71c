"""The layers import one way, and no module reaches into another's private names.

datasets_registry and models know nothing of bench or the leaderboard; bench's library knows
nothing of its command line (bench.cli, bench.commands) or of the leaderboard; nothing outside a
module uses its ``_private`` names (``from m import _x`` or ``m._x``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("datasets_registry", "models", "bench", "leaderboard")
CLI = ("bench.cli", "bench.commands", "bench.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, names imported from it, line) for every import in the file, at any depth."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def is_module(name: str) -> bool:
    path = REPO / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_go_one_way(path):
    me = module_name(path)
    bad = []
    for target, names, line in imports(path):
        full = [target] + [f"{target}.{n}" for n in names]
        if within(me, ("datasets_registry", "models")) and any(within(t, ("bench", "leaderboard")) for t in full):
            bad.append(f"line {line}: {me} imports {target} (datasets_registry and models know nothing of bench)")
        if within(me, ("bench",)) and not within(me, CLI):
            if any(within(t, CLI + ("leaderboard",)) for t in full):
                bad.append(f"line {line}: the library module {me} imports {target} (the CLI or the leaderboard)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", sources() + sorted((REPO / "benchmarks").glob("*.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_no_private_names_across_modules(path):
    me = module_name(path)
    bad, modules = [], {}
    tree = ast.parse(path.read_text(), str(path))
    for target, names, line in imports(path):
        for n in names:
            if private(n) and target != me:
                bad.append(f"line {line}: from {target} import {n}")
            if is_module(f"{target}.{n}"):
                modules[n] = f"{target}.{n}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                modules[a.asname or a.name.split(".")[0]] = a.name
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                if a.asname and a.name in modules:
                    modules[a.asname] = modules[a.name]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and private(node.attr):
            target = modules.get(node.value.id)
            if target is not None and target != me and within(target, PACKAGES):
                bad.append(f"line {node.lineno}: {node.value.id}.{node.attr} (a private name of {target})")
    assert not bad, f"{me} reaches into private names:\n" + "\n".join(bad)


def test_the_scan_sees_a_violation(tmp_path, monkeypatch):
    """The checks above would catch a library module importing the CLI, and a private attribute."""
    bad = REPO / "bench" / "zz_layer_probe.py"
    bad.write_text("from bench.commands.common import parse_options\nfrom bench import tracking\ntracking._checked\n")
    try:
        with pytest.raises(AssertionError, match="library module"):
            test_imports_go_one_way(bad)
        with pytest.raises(AssertionError, match="private name"):
            test_no_private_names_across_modules(bad)
    finally:
        bad.unlink()
