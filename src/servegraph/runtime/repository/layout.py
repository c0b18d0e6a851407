"""Reading a repository directory: models, their configs and versions; version policies.

Pure functions over the file system: no loading, no state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from servegraph.runtime.config import ModelConfig, VersionPolicy
from servegraph.runtime.protocol.versions import is_version_name
from servegraph.runtime.triton_config import parse_pbtxt

CONFIG_FILES = ("config.yaml", "config.yml", "config.pbtxt")


@dataclass(frozen=True, slots=True)
class ModelDir:
    """One model's directory as found on disk."""

    name: str
    path: Path
    config_file: Path | None
    config_mtime: float
    versions: dict[int, float]
    """Version number -> newest mtime found inside it (to notice replaced artifacts)."""


def _newest_mtime(path: Path) -> float:
    newest = path.stat().st_mtime
    for child in path.rglob("*"):
        try:
            newest = max(newest, child.stat().st_mtime)
        except FileNotFoundError:
            continue
    return newest


def scan(root: Path) -> dict[str, ModelDir]:
    """Every model directory under ``root`` with its numeric version subdirectories."""
    models: dict[str, ModelDir] = {}
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} is not a directory")
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config_file = next((path / f for f in CONFIG_FILES if (path / f).is_file()), None)
        versions = {
            int(v.name): _newest_mtime(v)
            for v in path.iterdir()
            if v.is_dir() and is_version_name(v.name)
        }
        models[path.name] = ModelDir(
            name=path.name,
            path=path,
            config_file=config_file,
            config_mtime=config_file.stat().st_mtime if config_file else 0.0,
            versions=versions,
        )
    return models


def read_config(model: ModelDir) -> ModelConfig:
    """The model's config; its name defaults to (and must match) the directory's."""
    if model.config_file is None:
        raise FileNotFoundError(f"model '{model.name}' has no {' or '.join(CONFIG_FILES)}")
    text = model.config_file.read_text()
    if model.config_file.suffix == ".pbtxt":
        config = parse_pbtxt(text, model.name)
    else:
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{model.config_file.name} of model '{model.name}' must be a mapping")
        data.setdefault("name", model.name)
        config = ModelConfig.model_validate(data)
    if config.name != model.name:
        raise ValueError(
            f"config of model directory '{model.name}' names the model '{config.name}'; "
            "they must match"
        )
    return config


def select_versions(policy: VersionPolicy, available: list[int]) -> list[int]:
    """The versions a policy serves out of those on disk, ascending."""
    ordered = sorted(available)
    if policy.all is not None:
        return ordered
    if policy.specific is not None:
        wanted = set(policy.specific.versions)
        return [v for v in ordered if v in wanted]
    count = policy.latest.num_versions if policy.latest is not None else 1
    return ordered[-count:]
