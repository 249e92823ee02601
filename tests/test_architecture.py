"""The import graph as a test: `bots -> adapters -> core`, the emulator outside core, no adapter importing another.

Imports are read with `ast` rather than by importing, so every import line counts, including those inside functions.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "adapters", "bots", "emulator", "tests", "benchmarks")
CHAT_LIBRARIES = {"slack_bolt", "slack_sdk", "discord"}


def imported_modules(source: str, module: str) -> set[str]:
    """Every module `source` imports, relative imports resolved against `module`, its dotted name.

    `from a import b` yields both `a` and `a.b`, since `b` may be a module (`from . import slack`).
    """
    package = module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, *([node.module] if node.module else [])])
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """Each module of the tree, by dotted name (`core.ledger.__init__`), with the modules it imports."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            graph[name] = imported_modules(path.read_text(encoding="utf-8"), name)
    return graph


def top(name: str) -> str:
    return name.split(".")[0]


def platform(adapter: str) -> str:
    """An adapter module's platform is its name's first word: `adapters.slack` and `adapters.slack_render` are one."""
    return adapter.split(".")[1].split("_")[0]


def forbidden_imports(graph: dict[str, set[str]], layer: str, forbidden: set[str]) -> list[str]:
    """The imports from modules of `layer` into the top-level packages `forbidden`, as readable lines."""
    return sorted(
        f"{module} imports {imported}"
        for module, imports in graph.items()
        if top(module) == layer
        for imported in imports
        if top(imported) in forbidden
    )


def cross_adapter_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from one platform's adapter modules into another platform's."""
    return sorted(
        f"{module} imports {imported}"
        for module, imports in graph.items()
        if top(module) == "adapters" and module != "adapters.__init__"
        for imported in imports
        if top(imported) == "adapters" and imported.count(".") and platform(imported) not in ("__init__", platform(module))
    )


GRAPH = import_graph()


def test_the_whole_tree_is_read():
    assert {"core.service", "core.ledger.__init__", "adapters.slack", "bots.app", "bots.cli"} <= GRAPH.keys()


def test_core_imports_no_adapter_bot_emulator_or_chat_library():
    assert forbidden_imports(GRAPH, "core", {"adapters", "bots", "emulator", "tests", *CHAT_LIBRARIES}) == []


def test_adapters_import_nothing_from_bots_or_the_emulator():
    assert forbidden_imports(GRAPH, "adapters", {"bots", "emulator", "tests"}) == []


def test_no_adapter_imports_another():
    assert cross_adapter_imports(GRAPH) == []


def test_the_emulator_imports_no_adapter_or_bot():
    assert forbidden_imports(GRAPH, "emulator", {"adapters", "bots", "tests"}) == []


def test_the_emulator_is_its_own_package_outside_core():
    assert "emulator.__init__" in GRAPH
    assert [name for name in GRAPH if name.startswith("core.emulator")] == []


@pytest.mark.parametrize("layer", ["core", "adapters", "bots", "emulator"])
def test_the_shipped_packages_do_not_import_the_tests(layer):
    """Benchmarks may: they measure the adapters against the same local stand-ins as the tests."""
    assert forbidden_imports(GRAPH, layer, {"tests"}) == []


def test_the_rules_see_every_spelling_of_an_import():
    """Plain, from, relative and in-function imports all count; an adapter's helper modules are the same adapter."""
    graph = {
        "core.a": imported_modules("import discord.ext\n", "core.a"),
        "core.ledger.b": imported_modules("def f():\n    from ...emulator import Emulator\n", "core.ledger.b"),
        "adapters.slack": imported_modules("from .slack_render import to_slack\nfrom . import console\n", "adapters.slack"),
        "adapters.slack_render": imported_modules("from adapters import slack\n", "adapters.slack_render"),
    }
    assert forbidden_imports(graph, "core", {"emulator", *CHAT_LIBRARIES}) == [
        "core.a imports discord.ext",
        "core.ledger.b imports emulator",
        "core.ledger.b imports emulator.Emulator",
    ]
    assert cross_adapter_imports(graph) == ["adapters.slack imports adapters.console"]
