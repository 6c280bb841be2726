"""The layers import one way (docs/layout.md): checked over the real import graph."""

from __future__ import annotations

from pathlib import Path

from tests.layering import CONTRACTS, Forbidden, import_graph, violations


def write(root: Path, module: str, source: str = "") -> None:
    path = root.joinpath(*module.split(".")[1:]).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)


def test_the_source_tree_keeps_every_layering_contract() -> None:
    assert violations(import_graph()) == []


def test_the_graph_sees_the_layers_and_infra_s_adapters() -> None:
    graph = import_graph()
    assert "threadlog.infra.store.eventstore" in graph["threadlog.infra.runs.executor"]
    assert "threadlog.http.app" in graph["threadlog.infra.cli"]


def test_a_direct_wrong_import_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "threadlog.domain.events", "from threadlog.infra.settings import Settings\n")
    write(tmp_path, "threadlog.infra.settings")
    assert violations(import_graph(tmp_path)) == [
        "threadlog.domain must not import threadlog.projections / threadlog.infra / "
        "threadlog.http: threadlog.domain.events -> threadlog.infra.settings"
    ]


def test_an_import_through_another_module_is_reported_with_its_chain(tmp_path: Path) -> None:
    write(tmp_path, "threadlog.infra.store.audit", "import threadlog.infra.settings\n")
    write(
        tmp_path,
        "threadlog.infra.settings",
        "def f() -> None:\n    import threadlog.infra.runs.executor\n",
    )
    write(tmp_path, "threadlog.infra.runs.executor")
    store_contract = [c for c in CONTRACTS if c.source == "threadlog.infra.store"]
    (line,) = violations(import_graph(tmp_path), store_contract)
    assert line.endswith(
        "threadlog.infra.store.audit -> threadlog.infra.settings -> threadlog.infra.runs.executor"
    )


def test_the_composition_root_alone_may_import_http(tmp_path: Path) -> None:
    write(tmp_path, "threadlog.infra.cli", "from threadlog.http import app\n")
    write(tmp_path, "threadlog.infra.runtime", "from threadlog.http.app import create_app\n")
    write(tmp_path, "threadlog.http.app")
    contract = Forbidden("threadlog.infra", ("threadlog.http",), allowed=("threadlog.infra.cli",))
    (line,) = violations(import_graph(tmp_path), [contract])
    assert line.endswith("threadlog.infra.runtime -> threadlog.http.app")
