"""The repository root is the `threadlog` package; its `http/` layer must never
shadow the standard library's `http`, from the root or in a built wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import http.client, http.server, threadlog.http.app, threadlog.domain, "
    "threadlog.projections, threadlog.infra.cli; "
    "print(http.client.__file__); print(threadlog.http.app.__file__)"
)


def run_python(code: str, cwd: Path, path: list[str] | None = None) -> list[str]:
    prefix = f"import sys; sys.path[:0] = {path!r}; " if path else ""
    result = subprocess.run(
        [sys.executable, "-c", prefix + code], cwd=cwd, capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()


def test_the_standard_library_http_wins_from_the_repository_root() -> None:
    stdlib_http, layer = run_python(PROBE, cwd=ROOT)
    assert Path(stdlib_http).parent.parent == Path(sys.base_prefix) / "lib" / (
        f"python{sys.version_info.major}.{sys.version_info.minor}"
    )
    assert Path(layer) == ROOT / "http" / "app.py"


def test_a_built_wheel_holds_the_layers_under_threadlog_only(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("threadlog-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "threadlog/http/app.py" in names and "threadlog/domain/conversation.py" in names
    assert not any(name.startswith(("http/", "domain/", "infra/", "tests/")) for name in names)
    # The console's files ship in the package (http/console.py serves them from there).
    console = {"index.html", "console.css", "js/app.js", "js/chat.js", "vendor/marked.esm.js"}
    assert {f"threadlog/http/static/{name}" for name in console} <= set(names)
    assert {
        "threadlog/http/static/vendor/purify.es.js",
        "threadlog/http/static/vendor/uPlot.esm.js",
    } <= set(names)
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    stdlib_http, layer = run_python(PROBE, cwd=unpacked, path=[str(unpacked)])
    assert "site-packages" not in stdlib_http and Path(layer) == unpacked / "threadlog/http/app.py"
