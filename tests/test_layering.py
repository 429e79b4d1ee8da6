"""The import rules that keep the layout readable, checked on the source (no imports run):
the store is the only door to DynamoDB, the API reaches the scheduler only through services,
the GPU image carries nothing of the control plane, and no package imports itself in a circle."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("control_plane", "handler", "infra")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((REPO / package).rglob("*.py"))


MODULES = {_module_name(path) for path in _sources()}


def _imports(path: Path) -> set[str]:
    """The modules `path` imports, at any depth (lazy imports inside functions count too):
    `from a import b` is the module `a.b` where there is one, else `a`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return found


GRAPH = {_module_name(path): _imports(path) for path in _sources()}


def _importers(prefix: str, *, of: str) -> list[str]:
    """Modules under `prefix` that import anything under `of`."""
    return sorted(
        module
        for module, imported in GRAPH.items()
        if module.startswith(prefix) and any(name.startswith(of) for name in imported)
    )


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("control_plane.api", "control_plane.scheduler"),  # routes call services only
        ("control_plane.health", "control_plane.scheduler"),
        ("control_plane.settings", "control_plane.scheduler"),
        ("control_plane.store", "control_plane.split"),
        ("control_plane.store", "control_plane.scheduler"),
        ("control_plane.store", "control_plane.api"),
        ("control_plane.split", "control_plane.scheduler"),
        # The rooms of control_plane/: the clients are the bottom, the entry points the top.
        ("control_plane.clients", "control_plane.services"),
        ("control_plane.clients", "control_plane.api"),
        ("control_plane.clients", "control_plane.scheduler"),
        ("control_plane.clients", "control_plane.split"),
        ("control_plane.services", "control_plane.api"),
        ("control_plane.services", "control_plane.entrypoints"),
        ("control_plane.api", "control_plane.entrypoints"),
        ("control_plane.scheduler", "control_plane.entrypoints"),
        ("infra", "control_plane.entrypoints"),
        ("handler", "control_plane"),  # the GPU image carries nothing of the API
        ("handler", "infra"),
        ("control_plane", "infra"),
    ],
)
def test_layer_does_not_import(importer: str, imported: str) -> None:
    assert _importers(importer, of=imported) == []


# The shared modules that stay at the top of control_plane/; anything else has a room
# (entrypoints, services, clients, api, scheduler, split, store, ...), so that a newcomer can
# name where a module lives.
TOP_LEVEL = {
    "__init__",
    "errors",
    "ids",
    "layout",
    "messages",
    "models",
    "observability",
    "settings",
    "webhooks",
}


def test_control_planes_top_level_holds_only_the_shared_modules() -> None:
    loose = {path.stem for path in (REPO / "control_plane").glob("*.py")}
    assert loose == TOP_LEVEL, "give a new module a room: " + ", ".join(sorted(loose - TOP_LEVEL))


def test_only_the_store_calls_the_table_or_builds_keys() -> None:
    table_call = re.compile(
        r"\btable\.(get|put|put_many|put_versioned|update|delete|transact|query_page|count|client)\b"
    )
    hand_key = re.compile(
        r"""["'](BATCH|FILE|UPLOAD|TENANT|APIKEY|CHUNK|DEAD|SCHED|HEALTH|WHE|EVENT|DELIVERY)#"""
    )
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in (REPO / "control_plane").rglob("*.py")
        if "store" not in path.relative_to(REPO).parts
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if table_call.search(line) or hand_key.search(line)
    ]
    assert offenders == []


def test_s3_keys_are_written_only_in_layout() -> None:
    key_literal = re.compile(
        r"""f?["'](files/|batches/|uploads/)|/chunks/|/parts/|errors-|output-"""
    )
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in (REPO / "control_plane").rglob("*.py")
        if path.name != "layout.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if key_literal.search(line) and "@router" not in line
    ]
    assert offenders == []


def _cycles(prefix: str) -> list[list[str]]:
    """Import circles among the modules under `prefix` (depth-first search)."""
    nodes = {module for module in GRAPH if module.startswith(prefix)}
    edges = {module: sorted(GRAPH[module] & nodes - {module}) for module in nodes}
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(path[path.index(module) :] + [module])
            return
        if module in done:
            return
        for target in edges[module]:
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(nodes):
        visit(module, [])
    return cycles


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle(package: str) -> None:
    assert _cycles(package) == []
