"""The package's shape: the import contracts, what the operator drags in, and the wheel.

The contracts themselves live in pyproject.toml ([tool.importlinter]); this runs
import-linter on them, shows that a broken contract is caught, imports the operator's
spec, validation and rendering in a fresh interpreter to see which libraries come with
them, and builds the wheel to check that it holds every module in src/.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
BIN = Path(sys.executable).parent


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_import_contracts_hold() -> None:
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout, done.stdout


def test_a_broken_contract_is_caught(tmp_path: Path) -> None:
    """The contracts can fail: a copy of the tree with one upward import breaks them."""
    copy = tmp_path / "tree"
    shutil.copytree(SRC, copy / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    (copy / "src/servegraph/runtime/protocol/types.py").write_text(
        (SRC / "servegraph/runtime/protocol/types.py").read_text()
        + "\nfrom servegraph.runtime.servers import rest  # noqa\n"
    )
    (copy / "src/servegraph/operator/spec.py").write_text(
        (SRC / "servegraph/operator/spec.py").read_text() + "\nimport numpy  # noqa\n"
    )
    done = subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PYTHONPATH": str(copy / "src"), "PATH": str(BIN)},
    )
    assert done.returncode != 0
    assert "Runtime layers" in done.stdout and "BROKEN" in done.stdout
    assert "servegraph.runtime.protocol.types -> servegraph.runtime.servers.rest" in done.stdout
    assert "servegraph.operator.spec -> numpy" in done.stdout


DATA_PLANE_LIBRARIES = ("grpc", "tritonclient", "aiohttp", "numpy", "onnxruntime", "google.protobuf")


def _loaded_after(imports: str, libraries: tuple[str, ...]) -> list[str]:
    probe = f"import sys\n{imports}\nprint(','.join(m for m in {libraries!r} if m in sys.modules))\n"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [m for m in done.stdout.strip().split(",") if m]


def test_the_operator_imports_no_data_plane_library() -> None:
    """What an operator image needs: spec, validation and rendering without numpy or grpc."""
    pure = (
        "import servegraph.operator.spec, servegraph.operator.validation, servegraph.operator.manifest\n"
        "import servegraph.operator.render, servegraph.operator.children, servegraph.operator.status\n"
        "import servegraph.operator.crd, servegraph.operator.reference"
    )
    assert _loaded_after(pure, DATA_PLANE_LIBRARIES) == []
    # kopf brings aiohttp (its own HTTP client); the rest of the data plane stays out.
    running = "import servegraph.operator.main"
    assert _loaded_after(running, tuple(m for m in DATA_PLANE_LIBRARIES if m != "aiohttp")) == []


def test_the_repository_root_has_no_importable_operator() -> None:
    """Nothing at the top level can shadow the standard library's ``operator``."""
    probe = "import operator, sys; print(operator.__file__ if hasattr(operator, '__file__') else 'builtin')"
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert str(ROOT) not in done.stdout
    assert not (ROOT / "operator").exists() and not (ROOT / "runtime").exists()


def _source_modules() -> set[str]:
    return {
        str(path.relative_to(SRC))
        for path in SRC.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed")
    }


@pytest.mark.timeout(300)
def test_the_wheel_holds_every_module(tmp_path: Path) -> None:
    """setuptools' discovery finds every package: none is silently left out of the wheel."""
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = tmp_path.glob("servegraph-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        inside = {name for name in archive.namelist() if not name.startswith("servegraph-")}
    assert inside == _source_modules()
