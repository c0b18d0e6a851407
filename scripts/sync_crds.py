#!/usr/bin/env python3
"""Copy the generated CRDs (crds/*.yaml, written by `servegraph crd`) into the Helm chart's
crds/ folder, which Helm installs before the templates. Files the top level no longer has
are removed from the chart. `--check` changes nothing and exits 1 when they differ.

    python scripts/sync_crds.py [--check]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "crds"
CHART_CRDS = ROOT / "charts" / "servegraph" / "crds"


def crd_files(folder: Path) -> dict[str, bytes]:
    """The CRD files in a folder by name (.yaml and .yml; .gitkeep and the like are not CRDs)."""
    if not folder.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in {".yaml", ".yml"}}


def differences(source: Path = SOURCE, target: Path = CHART_CRDS) -> list[str]:
    """What differs between the top-level CRDs and the chart's, one line each."""
    want, have = crd_files(source), crd_files(target)
    lines = [f"missing from the chart: {name}" for name in sorted(want.keys() - have.keys())]
    lines += [f"only in the chart: {name}" for name in sorted(have.keys() - want.keys())]
    lines += [f"differs: {name}" for name in sorted(want.keys() & have.keys()) if want[name] != have[name]]
    return lines


def sync(source: Path = SOURCE, target: Path = CHART_CRDS) -> list[str]:
    """Make the chart's CRDs equal to the top-level ones; returns what changed."""
    changes = differences(source, target)
    target.mkdir(parents=True, exist_ok=True)
    want = crd_files(source)
    for name in crd_files(target).keys() - want.keys():
        (target / name).unlink()
    for name in want:
        shutil.copyfile(source / name, target / name)
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report differences; exit 1 if any")
    args = parser.parse_args(argv)
    if args.check:
        found = differences()
        for line in found:
            print(line)
        if found:
            print("run: python scripts/sync_crds.py", file=sys.stderr)
        return 1 if found else 0
    for line in sync():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
