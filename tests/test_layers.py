"""The import layers of DESIGN.md and STYLE.md, checked on the source with ``ast``.

import-linter cannot see this package (its folders runtime/ and operator/ are mapped onto
``servegraph.*`` by setuptools, and grimp only walks real package folders), so the same
contracts are checked here: each runtime layer imports only layers below it, REST and gRPC
never import each other, and the runtime never imports the operator, kopf or kubernetes.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS = [
    ["servegraph.runtime.protocol"],
    [
        "servegraph.runtime.config",
        "servegraph.runtime.triton_config",
        "servegraph.runtime.graph.config",
        "servegraph.runtime.stats",
        "servegraph.runtime.metrics",
    ],
    ["servegraph.runtime.batching", "servegraph.runtime.backends"],
    ["servegraph.runtime.model", "servegraph.runtime.servable"],
    ["servegraph.runtime.repository", "servegraph.runtime.graph"],
    ["servegraph.runtime.dataplane"],
    ["servegraph.runtime.servers"],
    ["servegraph.runtime.server"],
    ["servegraph.runtime.cli"],
]
"""Lowest first: a module may import its own layer and the ones before it."""


def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT / "runtime").with_suffix("")
    parts = [p for p in relative.parts if p != "__init__"]
    return ".".join(["servegraph", "runtime", *parts])


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _layer(module: str) -> int | None:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


RUNTIME_FILES = sorted((ROOT / "runtime").rglob("*.py"))


def test_every_runtime_module_has_a_layer() -> None:
    missing = [_module_name(p) for p in RUNTIME_FILES if _module_name(p) != "servegraph.runtime" and _layer(_module_name(p)) is None]
    assert missing == []


@pytest.mark.parametrize("path", RUNTIME_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_runtime_imports_only_downwards(path: Path) -> None:
    module = _module_name(path)
    own = _layer(module)
    for imported in _imports(path):
        assert not imported.startswith(("servegraph.operator", "kopf", "kubernetes")), (
            f"{module} imports {imported}: the runtime never imports the control plane"
        )
        target = _layer(imported)
        if own is not None and target is not None:
            assert target <= own, f"{module} (layer {own}) imports {imported} (layer {target}) above it"


def test_rest_and_grpc_are_independent() -> None:
    rest = _imports(ROOT / "runtime" / "servers" / "rest.py")
    grpc = _imports(ROOT / "runtime" / "servers" / "grpc.py")
    assert not any(i.startswith("servegraph.runtime.servers.grpc") for i in rest)
    assert not any(i.startswith("servegraph.runtime.servers.rest") for i in grpc)


def test_the_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself can fail: an upward import is seen."""
    bad = tmp_path / "bad.py"
    bad.write_text("from servegraph.runtime.server import Server\n")
    assert _layer(next(iter(i for i in _imports(bad) if i.endswith("server")))) == 7


def test_the_operator_folder_never_shadows_the_standard_library() -> None:
    """From the repository root with the root first on sys.path and the standard ``operator``
    not loaded at startup (``-S``), ``import operator`` must still be the standard library's."""
    probe = (
        "import operator, collections, sys\n"
        "from operator import or_, itemgetter\n"
        "assert or_(1, 2) == 3 and itemgetter(1)('ab') == 'b'\n"
        "assert 'servegraph.operator' not in sys.modules and 'servegraph' not in sys.modules\n"
        "print(operator.attrgetter.__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("operator", "_operator")
    assert (ROOT / "operator" / "__init__.py").is_file(), "the probe above really met the folder"
