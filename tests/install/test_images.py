"""The Dockerfiles, parsed (they cannot be built here: no Docker engine): every path they
copy exists and passes .dockerignore, every pip install names extras and dependency groups
that pyproject.toml has, the final stage runs as a numeric non-root user with `servegraph`
as its entrypoint, every base image is pinned, and the operator image's dependencies hold no
numpy or grpc."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from tests.install.chart import ROOT

IMAGES = sorted((ROOT / "images").glob("*.Dockerfile"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass
class Instruction:
    line: int
    keyword: str
    arguments: str


def parse(path: Path) -> list[Instruction]:
    """A Dockerfile's instructions, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append(Instruction(start, keyword.upper(), arguments.strip()))
    assert not pending, f"{path.name}: a continuation line runs off the end"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    found: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            found.append([])
        assert found, "the first instruction must be FROM"
        found[-1].append(instruction)
    return found


def dockerignore_allows(relative: str) -> bool:
    """Whether .dockerignore lets this path into the build context (last match wins)."""
    allowed = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        parts = Path(relative).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern == "**" or any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            allowed = negate
    return allowed


@pytest.fixture(params=IMAGES, ids=[p.name for p in IMAGES])
def dockerfile(request: pytest.FixtureRequest) -> tuple[Path, list[Instruction]]:
    return request.param, parse(request.param)


def test_the_three_images_exist() -> None:
    assert [p.name for p in IMAGES] == ["operator.Dockerfile", "runtime-gpu.Dockerfile", "runtime.Dockerfile"]


def test_base_images_are_pinned(dockerfile: tuple[Path, list[Instruction]]) -> None:
    path, instructions = dockerfile
    names: set[str] = set()
    for instruction in instructions:
        if instruction.keyword != "FROM":
            continue
        words = [w for w in instruction.arguments.split() if not w.startswith("--platform")]
        image = words[0]
        if len(words) == 3:
            assert words[1].upper() == "AS"
            names.add(words[2])
        if image in names:
            continue
        assert "$" not in image, f"{path.name}:{instruction.line}: the base image is a variable"
        if "@sha256:" in image:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{path.name}:{instruction.line}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{path.name}:{instruction.line}: {image} is not pinned to a version"


def test_copied_paths_exist_in_the_context(dockerfile: tuple[Path, list[Instruction]]) -> None:
    path, instructions = dockerfile
    stage_names = {i.arguments.split()[-1] for i in instructions if i.keyword == "FROM" and " AS " in i.arguments.upper()}
    copies = [i for i in instructions if i.keyword in {"COPY", "ADD"}]
    assert copies
    for instruction in copies:
        assert instruction.keyword == "COPY", f"{path.name}:{instruction.line}: use COPY, not ADD"
        words = shlex.split(instruction.arguments)
        options = [w for w in words if w.startswith("--")]
        sources = [w for w in words if not w.startswith("--")][:-1]
        from_stage = next((o.split("=", 1)[1] for o in options if o.startswith("--from=")), None)
        if from_stage is not None:
            assert from_stage in stage_names, f"{path.name}:{instruction.line}: no stage {from_stage}"
            continue
        for source in sources:
            assert (ROOT / source).exists(), f"{path.name}:{instruction.line}: {source} does not exist"
            assert dockerignore_allows(source), f"{path.name}:{instruction.line}: .dockerignore excludes {source}"


def test_pip_installs_name_real_extras_and_groups(dockerfile: tuple[Path, list[Instruction]]) -> None:
    path, instructions = dockerfile
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    groups = set(PYPROJECT["dependency-groups"])
    for instruction in instructions:
        if instruction.keyword != "RUN":
            continue
        for command in re.split(r"&&|;", instruction.arguments):
            if not re.search(r"\bpip install\b", command):
                continue
            for listed in re.findall(r"servegraph[^\s\"']*\[([A-Za-z0-9_,-]+)\]", command):
                for extra in listed.split(","):
                    assert extra in extras, f"{path.name}:{instruction.line}: no extra {extra!r} in pyproject.toml"
            for group in re.findall(r"--group[ =](\S+)", command):
                name = group.rsplit(":", 1)[-1]
                assert name in groups, f"{path.name}:{instruction.line}: no dependency group {name!r}"
            assert "--no-cache-dir" in command, f"{path.name}:{instruction.line}: pip's cache would stay in the image"


def test_final_stage_runs_servegraph_as_a_numeric_non_root_user(dockerfile: tuple[Path, list[Instruction]]) -> None:
    path, instructions = dockerfile
    final = stages(instructions)[-1]
    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users, f"{path.name}: the final stage sets no USER (it would run as root)"
    user = users[-1]
    assert re.fullmatch(r"\d+(:\d+)?", user), f"{path.name}: USER {user} is not numeric (runAsNonRoot cannot verify a name)"
    assert all(int(part) != 0 for part in user.split(":")), f"{path.name}: USER {user} is root"
    assert int(user.split(":")[0]) == 65532
    last = [i for i in final if i.keyword == "USER"][-1]
    assert not [i for i in final if i.keyword == "RUN" and i.line > last.line], f"{path.name}: RUN after USER"
    entrypoints = [i for i in final if i.keyword == "ENTRYPOINT"]
    assert len(entrypoints) == 1 and json.loads(entrypoints[0].arguments) == ["servegraph"]


def test_builds_are_multi_stage(dockerfile: tuple[Path, list[Instruction]]) -> None:
    path, instructions = dockerfile
    assert len(stages(instructions)) >= 2, f"{path.name}: build the wheel in its own stage"


def _closure(requirements: list[str]) -> set[str]:
    """Names of the installed distributions these requirements pull in (from this venv)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(Requirement(r) for r in importlib.metadata.requires(requirement.name) or [])
    return seen


def test_operator_image_has_no_data_plane() -> None:
    instructions = parse(ROOT / "images" / "operator.Dockerfile")
    runs = " ".join(i.arguments for i in instructions if i.keyword == "RUN")
    assert re.search(r"pip install [^&]*--no-deps [^&]*servegraph-\*\.whl", runs)
    assert "--group /tmp/servegraph/pyproject.toml:operator-image" in runs
    closure = _closure(PYPROJECT["dependency-groups"]["operator-image"])
    assert {"kopf", "kubernetes", "pydantic", "pyyaml"} <= closure
    assert not closure & {"numpy", "grpcio", "tritonclient", "onnxruntime", "scipy", "protobuf"}, closure


def test_gpu_image_uses_onnxruntime_gpu_only() -> None:
    runs = " ".join(i.arguments for i in parse(ROOT / "images" / "runtime-gpu.Dockerfile") if i.keyword == "RUN")
    assert "[onnx-gpu," in runs and "[onnx," not in runs
    extras: dict[str, Any] = PYPROJECT["project"]["optional-dependencies"]
    assert [Requirement(r).name for r in extras["onnx-gpu"]] == ["onnxruntime-gpu"]
