"""The chart's README documents every value, and its crds/ folder holds the top-level CRDs."""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import kubernetes_validate
import yaml

from tests.install.chart import CHART, KUBE_VERSION, ROOT


def leaves(values: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of values.yaml's leaves; an empty map or any list is a leaf."""
    found: list[str] = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            found.extend(leaves(value, f"{path}."))
        else:
            found.append(path)
    return found


def documented() -> dict[str, str]:
    """The README's values table: value path -> default column."""
    rows = re.findall(r"^\| `([A-Za-z0-9_.]+)` \| `([^`]*)` \|", (CHART / "README.md").read_text(), re.MULTILINE)
    return dict(rows)


def test_every_value_is_documented_and_nothing_else() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert sorted(documented()) == sorted(leaves(values))


def test_documented_defaults_match() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path, default in documented().items():
        value: Any = values
        for part in path.split("."):
            value = value[part]
        shown = yaml.safe_load(default) if default not in ("", '""') else ""
        assert shown == value, (path, default, value)


def test_every_value_has_a_comment_in_values_yaml() -> None:
    """Each key line of values.yaml is preceded by a comment line (or is under one)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z0-9_]+:", line):
            assert lines[i - 1].lstrip().startswith("#"), f"values.yaml:{i + 1} {line.strip()} has no comment"


def _sync_module() -> Any:
    spec = importlib.util.spec_from_file_location("sync_crds", ROOT / "scripts" / "sync_crds.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chart_crds_are_the_top_level_crds() -> None:
    """Until `servegraph crd` has written crds/, both folders are empty and agree."""
    sync = _sync_module()
    top, chart = sync.crd_files(ROOT / "crds"), sync.crd_files(CHART / "crds")
    assert sorted(top) == sorted(chart), "run: python scripts/sync_crds.py"
    assert sync.differences() == [], "run: python scripts/sync_crds.py"


def test_chart_crds_are_valid_crds() -> None:
    """Each file in the chart's crds/ is one CustomResourceDefinition, valid for 1.33."""
    for path in sorted((CHART / "crds").glob("*.y*ml")):
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert [d["kind"] for d in documents] == ["CustomResourceDefinition"], path.name
        assert documents[0]["spec"]["group"] == "servegraph.io"
        kubernetes_validate.validate(documents[0], KUBE_VERSION, strict=True)


def test_sync_copies_and_prunes(tmp_path: Any) -> None:
    sync = _sync_module()
    source, target = tmp_path / "crds", tmp_path / "chart-crds"
    source.mkdir()
    target.mkdir()
    (source / "a.yaml").write_text("kind: CustomResourceDefinition\n")
    (target / "old.yaml").write_text("stale\n")
    (target / ".gitkeep").write_text("")
    assert sync.differences(source, target) == ["missing from the chart: a.yaml", "only in the chart: old.yaml"]
    sync.sync(source, target)
    assert sorted(p.name for p in target.iterdir()) == [".gitkeep", "a.yaml"]
    assert sync.differences(source, target) == []
