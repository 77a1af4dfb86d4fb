"""The package's structure, as checks: layers without import cycles, private names kept private,
modules of a readable size, and no pointer to documents that are not in this repository.

The rules are written down in docs/ARCHITECTURE.md; these tests keep them true as the code
changes. Every module is its own test case, so a report names the module that broke a rule.
Known offenders that are being fixed right now carry a strict ``xfail`` naming the change that
fixes them: when that change lands the case passes, strict turns the pass into a failure, and
the marker must be removed — the list can only shrink.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "agent"

#: the size above which a module must justify itself
MAX_LINES = 650

#: modules allowed over MAX_LINES, each because it is one concept that splitting would scatter
LONG_MODULES_ALLOWED = {
    "agent.metrics": "the one metrics module: every Prometheus family of both roles in one "
    "place, so names, labels and bounds are reviewed together",
    "agent.model": "the one model of the world: every resource of both accounts and the "
    "Topology's queries over them (splitting it would make two models)",
    "agent.probes.syn": "one engine: templates, the send loop, the receive loop and the "
    "nmap-style classification share the hot path's state",
    "agent.diagnose.verdict": "one decision table (stage x control) and the evidence each row "
    "reads; split, the table would no longer read top to bottom",
    "agent.diagnose.rounds": "one probe round in order: DNS, path planning, probes, provider "
    "evidence, correlation",
    "agent.lab.snapshot": "the snapshot writer: one renderer per describe-* call, the mirror "
    "image of agent.sources.aws_snapshot",
    "agent.sources.aws_snapshot": "the one describe-* parser every source goes through "
    "(snapshot, live AWS, the lab's snapshot)",
    "agent.lab.plan": "the lab's layout as data: namespaces, veths, addresses, routes and "
    "daemons are decided together (the nftables text lives in agent.lab.nft)",
    "agent.sources.topology": "the topology builder: every cross-reference check of the lab "
    "YAML in one pass (the document schema lives in agent.sources.topology_schema)",
    "agent.daemon.server": "the Daemon: schedules, reload, views and publication share one "
    "lifecycle (the /probe index and allocator tuning live beside it)",
}

#: module -> the change that removes it from an import cycle
CYCLE_OFFENDERS: dict[str, str] = {}

#: module -> the private name it imports from another module, and the change that fixes it
PRIVATE_IMPORT_OFFENDERS: dict[str, str] = {}

#: module -> the split that brings it under MAX_LINES
LONG_MODULE_OFFENDERS: dict[str, str] = {}

#: where the rule "no pointer to external design documents" applies
SCANNED = ["agent", "tests", "docs", "bench", "deploy", "configs", "README.md", "Dockerfile"]
#: names of design documents kept outside this repository (spelled in pieces so that this file
#: does not match itself)
EXTERNAL_DOCS = ("AWS-" + "FACTS", "DESIGN" + ".md", "STYLE" + ".md", "shared" + "/")


@dataclass
class Module:
    """One module of the agent package: its file and the agent modules it imports."""

    name: str
    path: Path
    is_package: bool
    imports: set[str] = field(default_factory=set)
    #: (source module, name) for every ``from agent.x import _y`` of another module
    private_imports: list[tuple[str, str]] = field(default_factory=list)

    @property
    def lines(self) -> int:
        return len(self.path.read_text().splitlines())


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that can run: module level and inside functions, but not ``if TYPE_CHECKING``
    blocks (they never execute, so they cannot take part in an import-order problem)."""
    nodes: list[ast.AST] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)
    return nodes


def scan(name: str, is_package: bool, source: str, known: set[str]) -> tuple[set[str], list]:
    """The agent modules ``source`` imports (module and function level), and the private names
    it imports from other modules as (module, name) pairs."""
    package = name if is_package else name.rpartition(".")[0]

    def owner(dotted: str) -> str | None:
        """The agent module that defines ``dotted`` (itself, or the nearest parent module)."""
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    imports: set[str] = set()
    private_imports: list[tuple[str, str]] = []
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [owner(a.name) for a in node.names if a.name.startswith("agent")]
            imports |= {t for t in targets if t and t != name}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if origin != "agent" and not origin.startswith("agent."):
                continue
            for alias in node.names:
                full = f"{origin}.{alias.name}"
                target = full if full in known else owner(origin)
                if target and target != name:
                    imports.add(target)
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                own_submodule = full in known and origin == package
                if private and owner(origin) != name and not own_submodule:
                    private_imports.append((origin, alias.name))
    return imports, private_imports


@cache
def modules() -> dict[str, Module]:
    """The import graph of agent/**/*.py."""
    found: dict[str, Module] = {}
    for path in sorted(AGENT.rglob("*.py")):
        name, is_package = _module_name(path)
        found[name] = Module(name, path, is_package)
    for mod in found.values():
        mod.imports, mod.private_imports = scan(
            mod.name, mod.is_package, mod.path.read_text(), set(found)
        )
    return found


def strongly_connected(graph: dict[str, list[str]]) -> list[set[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(graph[node]):
                work.append((node, i + 1))
                nxt = graph[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


@cache
def cycles() -> list[set[str]]:
    """Import cycles among the agent's modules."""
    return strongly_connected({name: sorted(m.imports) for name, m in modules().items()})


def _cases(offenders: dict[str, str], names: list[str]) -> list[object]:
    return [
        pytest.param(
            name,
            id=name,
            marks=[pytest.mark.xfail(strict=True, reason=offenders[name])]
            if name in offenders
            else [],
        )
        for name in names
    ]


ALL_MODULES = sorted(modules())


# -- the checker itself --------------------------------------------------------------------


KNOWN = {"agent", "agent.a", "agent.b", "agent.pkg", "agent.pkg.c", "agent.pkg._d"}


def test_imports_at_module_level_and_inside_functions_are_both_edges() -> None:
    source = "import agent.a\n\ndef f():\n    from agent import b\n"
    assert scan("agent.x", False, source, KNOWN)[0] == {"agent.a", "agent.b"}


def test_a_name_imported_from_a_package_is_an_edge_to_the_package() -> None:
    assert scan("agent.x", False, "from agent.pkg import Thing\n", KNOWN)[0] == {"agent.pkg"}


def test_relative_imports_resolve_against_the_package() -> None:
    source = "from . import c\nfrom ..a import f\n"
    assert scan("agent.pkg.e", False, source, KNOWN)[0] == {"agent.pkg.c", "agent.a"}


def test_type_checking_imports_are_not_edges() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent.a import A\n"
    assert scan("agent.x", False, source, KNOWN)[0] == set()


def test_a_private_name_from_another_module_is_reported() -> None:
    source = "from agent.a import _helper, public\n"
    assert scan("agent.x", False, source, KNOWN)[1] == [("agent.a", "_helper")]


def test_dunders_and_private_submodules_of_the_own_package_are_not_reported() -> None:
    source = "from agent.a import __version__\nfrom agent.pkg import _d\n"
    assert scan("agent.pkg.c", False, source, KNOWN)[1] == []


def test_a_cycle_is_a_component_of_more_than_one_module() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"], "e": ["e"]}
    assert strongly_connected(graph) == [{"a", "b", "c"}]


def test_an_acyclic_graph_has_no_cycle() -> None:
    assert strongly_connected({"a": ["b", "c"], "b": ["c"], "c": []}) == []


# -- rules, one case per module ------------------------------------------------------------


@pytest.mark.parametrize("name", _cases(CYCLE_OFFENDERS, ALL_MODULES))
def test_module_is_in_no_import_cycle(name: str) -> None:
    cycle = [sorted(c) for c in cycles() if name in c]
    assert not cycle, f"{name} is in an import cycle with {cycle}"


@pytest.mark.parametrize("name", _cases(PRIVATE_IMPORT_OFFENDERS, ALL_MODULES))
def test_module_imports_no_private_name_of_another_module(name: str) -> None:
    assert modules()[name].private_imports == []


@pytest.mark.parametrize(
    "name", _cases(LONG_MODULE_OFFENDERS, [n for n in ALL_MODULES if n not in LONG_MODULES_ALLOWED])
)
def test_module_is_at_most_650_lines(name: str) -> None:
    assert modules()[name].lines <= MAX_LINES


@pytest.mark.parametrize("name", sorted(LONG_MODULES_ALLOWED))
def test_every_allowed_long_module_still_needs_its_exception(name: str) -> None:
    assert name in modules(), f"{name} is gone: remove it from LONG_MODULES_ALLOWED"
    assert modules()[name].lines > MAX_LINES, f"{name} is short now: remove its exception"


def test_the_offender_lists_name_existing_modules() -> None:
    listed = set(CYCLE_OFFENDERS) | set(PRIVATE_IMPORT_OFFENDERS) | set(LONG_MODULE_OFFENDERS)
    assert listed <= set(modules())


# -- documents -----------------------------------------------------------------------------


def _scanned_files() -> list[Path]:
    files: list[Path] = []
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in sorted(path.rglob("*")) if p.is_file()]
    return [p for p in files if "__pycache__" not in p.parts]


def test_no_file_points_to_design_documents_outside_the_repository() -> None:
    pattern = re.compile("|".join(re.escape(d) for d in EXTERNAL_DOCS))
    hits = []
    for path in _scanned_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert hits == []
