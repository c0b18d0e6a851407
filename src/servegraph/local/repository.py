"""Materialise a rendered Model node as a one-model repository on this machine.

The local target's half of rendering: ``servegraph.operator.render`` says *what* a model
node serves (a source folder and the spec's overrides) without touching the disk; this
module reads the folder's own config (config.yaml or config.pbtxt, through the runtime's
repository reader) and writes the repository ``servegraph serve`` loads.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from servegraph.operator.render import RenderedModel, RenderError
from servegraph.runtime.config import ModelConfig
from servegraph.runtime.protocol.versions import is_version_name
from servegraph.runtime.repository.layout import CONFIG_FILES, ModelDir, read_config


def write_model_repository(model: RenderedModel, target: Path) -> Path:
    """Materialise ``model`` as ``target/<modelName>/`` for a local run; return that folder.

    Its sources must be local folders: a remote storageUri is fetched first (``servegraph
    run`` does it with ``servegraph.runtime.storage.fetch_model``), then passed in with
    ``repository_files`` pointing at the fetched folder.

    Version folders (and any other entries) are symlinks to the model folder; the config
    is written fresh: the folder's own config with the spec's overrides. Running it again
    brings the folder up to date.
    """
    where = f"node '{model.node}'"
    source = model.repository_files[model.model_name]
    if isinstance(source, str):
        raise RenderError(
            f"{where}: storageUri {source} is remote; fetch it first"
            " (servegraph.runtime.storage.fetch_model, as `servegraph run` does)"
        )
    if not source.is_dir():
        raise RenderError(
            f"{where}: model folder {source} (storageUri '{model.storage_uri}') is not a directory"
        )
    versions = sorted(e.name for e in source.iterdir() if e.is_dir() and is_version_name(e.name))
    if not versions:
        raise RenderError(
            f"{where}: model folder {source} has no numbered version folders"
            " (Triton layout: <model>/config.yaml and <model>/<version>/<artifact>)"
        )
    config = _config(model, source)
    dest = target / model.model_name
    dest.mkdir(parents=True, exist_ok=True)
    entries = {
        e.name: e
        for e in source.iterdir()
        if e.name not in CONFIG_FILES and not e.name.startswith(".")
    }
    for stale in dest.iterdir():
        if stale.is_symlink() and stale.name not in entries:
            stale.unlink()
        elif stale.name in CONFIG_FILES and stale.name != "config.yaml":
            stale.unlink()
    for name, entry in entries.items():
        link = dest / name
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise RenderError(f"{where}: {link} exists and is not a link servegraph made; remove it")
        link.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    header = (
        f"# Written by servegraph for node '{model.node}' from {source} and the"
        " ModelDeployment's overrides; changes here are overwritten.\n"
    )
    text = yaml.safe_dump(config.model_dump(exclude_none=True), sort_keys=False)
    (dest / "config.yaml").write_text(header + text)
    return dest


def _config(model: RenderedModel, source: Path) -> ModelConfig:
    """The model folder's config (or a bare one from ``format``) with the overrides applied."""
    where = f"node '{model.node}'"
    config_file = next((source / f for f in CONFIG_FILES if (source / f).is_file()), None)
    try:
        if config_file is not None:
            base = read_config(ModelDir(source.name, source, config_file, 0.0, {}))
        elif model.overrides.backend is not None:
            base = ModelConfig.model_validate({"name": source.name, "backend": model.overrides.backend})
        else:
            raise RenderError(
                f"{where}: model folder {source} has no {' or '.join(CONFIG_FILES)};"
                " add one or set model.format"
            )
    except (ValueError, OSError) as error:
        if isinstance(error, RenderError):
            raise
        raise RenderError(f"{where}: cannot read the config in {source}: {error}") from None
    try:
        return model.overrides.apply(base)
    except ValidationError as error:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        raise RenderError(
            f"{where}: the config of {source} with the spec's overrides is invalid: {problems}"
        ) from None
