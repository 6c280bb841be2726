"""The layering contract, checked over the import graph of the source tree.

import-linter (grimp) cannot see `threadlog.http`: the layer has no `__init__.py`
on purpose (docs/layout.md), and grimp does not read namespace portions. So the
graph is read here with `ast`: every `import` and `from … import` of a
`threadlog.*` module, wherever it stands (functions and TYPE_CHECKING blocks
included), followed transitively. `python -m tests.layering` prints each broken
contract with its import chain and exits 1.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("domain", "projections", "infra", "http")
Graph = dict[str, set[str]]


@dataclass(frozen=True)
class Forbidden:
    """No module under `source` (except `allowed`) may reach a module under `forbidden`."""

    source: str
    forbidden: tuple[str, ...]
    allowed: tuple[str, ...] = ()


CONTRACTS = (
    Forbidden("threadlog.domain", ("threadlog.projections", "threadlog.infra", "threadlog.http")),
    Forbidden("threadlog.projections", ("threadlog.http",)),
    Forbidden(
        "threadlog.infra.store",
        ("threadlog.infra.stream", "threadlog.infra.runs", "threadlog.infra.agents"),
    ),
    Forbidden("threadlog.infra.stream", ("threadlog.infra.runs",)),
    Forbidden("threadlog.infra.agents", ("threadlog.infra.runs",)),
    # the composition root is the one place infra meets the HTTP layer
    Forbidden("threadlog.infra", ("threadlog.http",), allowed=("threadlog.infra.cli",)),
)


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("threadlog", *parts))


def source_files(root: Path) -> Iterable[Path]:
    for layer in LAYERS:
        yield from sorted((root / layer).rglob("*.py"))


def imported(tree: ast.AST, known: set[str]) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name in known}


def import_graph(root: Path = ROOT) -> Graph:
    paths = {module_name(root, path): path for path in source_files(root)}
    known = set(paths)
    return {
        name: imported(ast.parse(path.read_text(), str(path)), known) - {name}
        for name, path in paths.items()
    }


def within(module: str, packages: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def chain_to(graph: Graph, start: str, targets: tuple[str, ...]) -> list[str] | None:
    """The shortest import chain from `start` to a module under `targets`, if any."""
    came_from: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        if within(module, targets):
            chain = [module]
            while (previous := came_from[chain[-1]]) is not None:
                chain.append(previous)
            return chain[::-1]
        for child in sorted(graph.get(module, ())):
            if child not in came_from:
                came_from[child] = module
                queue.append(child)
    return None


def violations(graph: Graph, contracts: Iterable[Forbidden] = CONTRACTS) -> list[str]:
    broken = []
    for contract in contracts:
        for module in sorted(graph):
            if not within(module, (contract.source,)) or within(module, contract.allowed):
                continue
            chain = chain_to(graph, module, contract.forbidden)
            if chain:
                broken.append(
                    f"{contract.source} must not import {' / '.join(contract.forbidden)}: "
                    + " -> ".join(chain)
                )
    return broken


def main() -> int:
    broken = violations(import_graph())
    for line in broken:
        print(line, file=sys.stderr)
    print(f"layering: {len(CONTRACTS)} contracts, {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
