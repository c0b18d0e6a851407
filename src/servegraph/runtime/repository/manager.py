"""The live repository: which versions are loaded, their states, and hot (re)loading.

Polling rescans the directory; a new version is loaded and warmed up off the event loop
and only then made available, a removed one is taken out of routing first and drained,
a changed config or artifact is loaded side by side and swapped in. A model that fails to
load is UNAVAILABLE with its error, and the others keep serving.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from servegraph.runtime.config import ModelConfig
from servegraph.runtime.metrics import ServerMetrics
from servegraph.runtime.model import ServedModel
from servegraph.runtime.protocol.errors import ModelNotFound, ModelNotReady
from servegraph.runtime.protocol.versions import requested_version
from servegraph.runtime.repository.layout import ModelDir, read_config, scan, select_versions
from servegraph.runtime.triton_config import to_json

log = logging.getLogger(__name__)


class State(str, Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class VersionEntry:
    version: int
    state: State
    reason: str = ""
    served: ServedModel | None = None
    fingerprint: tuple[float, float] = (0.0, 0.0)
    """(config mtime, version dir mtime) it was loaded from."""


@dataclass(slots=True)
class ModelEntry:
    name: str
    versions: dict[int, VersionEntry]
    config: ModelConfig | None = None
    error: str = ""


class ModelRepository:
    """Owns every ServedModel; the dataplane looks models up here."""

    def __init__(
        self,
        root: Path,
        metrics: ServerMetrics,
        default_max_queue_size: int,
        drain_timeout: float = 30.0,
    ) -> None:
        self.root = root
        self._metrics = metrics
        self._default_queue = default_max_queue_size
        self._drain_timeout = drain_timeout
        self.models: dict[str, ModelEntry] = {}
        self._sync_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- lookup
    def get(self, name: str, version: str = "") -> ServedModel:
        """The served model for a request: 404 if unknown, 503 if not ready."""
        entry = self.models.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model: '{name}'")
        if version:
            number = requested_version(version, name)
            if number not in entry.versions:
                raise ModelNotFound(
                    f"unknown version '{version}' of model '{name}'; "
                    f"available: {sorted(entry.versions)}"
                )
            ve = entry.versions[number]
            if ve.state is not State.READY or ve.served is None:
                raise ModelNotReady(
                    f"model '{name}' version {version} is not ready: {ve.state.value}"
                    + (f" ({ve.reason})" if ve.reason else "")
                )
            return ve.served
        ready = [v for v in entry.versions.values() if v.state is State.READY and v.served]
        if not ready:
            reason = entry.error or ", ".join(
                f"version {v.version} {v.state.value}" + (f" ({v.reason})" if v.reason else "")
                for v in entry.versions.values()
            )
            raise ModelNotReady(f"model '{name}' has no ready version" + (f": {reason}" if reason else ""))
        served = max(ready, key=lambda v: v.version).served
        assert served is not None
        return served

    def all_ready(self) -> bool:
        """Strict readiness: every model serves a READY version and none failed to load.

        A version still LOADING beside a READY one (hot pickup) does not flip readiness,
        or every rollout of a new version would take the pod out of its Service.
        """
        for entry in self.models.values():
            states = [v.state for v in entry.versions.values()]
            if entry.error or State.READY not in states or State.UNAVAILABLE in states:
                return False
        return True

    def any_ready(self) -> bool:
        return any(
            v.state is State.READY for e in self.models.values() for v in e.versions.values()
        )

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """The repository index: one row per model version, with state and reason."""
        rows: list[dict[str, Any]] = []
        for name, entry in sorted(self.models.items()):
            if entry.error and not entry.versions:
                if not ready_only:
                    rows.append({"name": name, "state": State.UNAVAILABLE.value, "reason": entry.error})
                continue
            for version, ve in sorted(entry.versions.items()):
                if ready_only and ve.state is not State.READY:
                    continue
                rows.append(
                    {"name": name, "version": str(version), "state": ve.state.value, "reason": ve.reason}
                )
        return rows

    def triton_config(self, name: str, version: str = "") -> dict[str, Any]:
        """The served version's config as Triton's ModelConfig JSON (the config endpoints)."""
        return to_json(self.get(name, version).config)

    def served_versions(self, name: str) -> list[str]:
        entry = self.models.get(name)
        if entry is None:
            return []
        return [str(v) for v, ve in sorted(entry.versions.items()) if ve.state is State.READY]

    # ---------------------------------------------------------------- loading
    async def sync(self) -> None:
        """Bring loaded versions in line with the directory (one pass at a time)."""
        async with self._sync_lock:
            found = await asyncio.to_thread(scan, self.root)
            for name in list(self.models):
                if name not in found:
                    await self._retire_model(name)
            for name, model_dir in found.items():
                await self._sync_model(model_dir)

    async def poll(self, interval: float) -> None:
        """Rescan every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sync()
            except Exception:
                log.exception("repository poll of %s failed", self.root)

    async def _sync_model(self, model_dir: ModelDir) -> None:
        entry = self.models.setdefault(model_dir.name, ModelEntry(model_dir.name, {}))
        try:
            config = await asyncio.to_thread(read_config, model_dir)
        except Exception as exc:
            message = f"invalid config: {exc}"
            if entry.error != message:
                log.error("model '%s': %s", model_dir.name, message)
            entry.error = message
            return
        entry.error = ""
        entry.config = config
        wanted = select_versions(config.version_policy, list(model_dir.versions))
        if not wanted:
            entry.error = f"no version directory matches the version policy ({sorted(model_dir.versions)} on disk)"
        for version in wanted:
            fingerprint = (model_dir.config_mtime, model_dir.versions[version])
            current = entry.versions.get(version)
            if current is not None and current.fingerprint == fingerprint:
                continue
            await self._load_version(entry, config, version, model_dir.path / str(version), fingerprint)
        # Availability first (TF Serving's policy): old versions leave only once a wanted
        # version serves, so a broken new version never takes the model down.
        new_ready = any(
            entry.versions[v].state is State.READY for v in wanted if v in entry.versions
        )
        for version in list(entry.versions):
            if version not in wanted and (new_ready or version not in model_dir.versions):
                await self._retire_version(entry, version)

    async def _load_version(
        self,
        entry: ModelEntry,
        config: ModelConfig,
        version: int,
        path: Path,
        fingerprint: tuple[float, float],
    ) -> None:
        current = entry.versions.get(version)
        if current is None:
            current = entry.versions[version] = VersionEntry(version, State.LOADING, fingerprint=fingerprint)
        log.info("loading model '%s' version %d", entry.name, version)
        try:
            served = await asyncio.to_thread(ServedModel.load, config, str(version), path)
        except Exception as exc:
            current.fingerprint = fingerprint
            if current.served is None:
                current.state = State.UNAVAILABLE
            current.reason = f"{type(exc).__name__}: {exc}"
            log.error("model '%s' version %d failed to load: %s", entry.name, version, exc)
            return
        served.start(self._metrics, self._default_queue)
        old = current.served
        current.served, current.state, current.reason = served, State.READY, ""
        current.fingerprint = fingerprint
        log.info("model '%s' version %d is READY", entry.name, version)
        if old is not None:
            self._spawn(old.close(self._drain_timeout))

    async def _retire_version(self, entry: ModelEntry, version: int) -> None:
        ve = entry.versions.pop(version)
        log.info("unloading model '%s' version %d", entry.name, version)
        if ve.served is not None:
            # Out of routing first (popped above), then drained in the background.
            self._spawn(self._close_retired(entry.name, version, ve.served))

    async def _close_retired(self, name: str, version: int, served: ServedModel) -> bool:
        """Drain and unload a retired version, then drop its metric series (unless it is back)."""
        try:
            return await served.close(self._drain_timeout)
        finally:
            back = self.models.get(name)
            if back is None or version not in back.versions:
                self._metrics.remove_model(name, str(version))

    async def _retire_model(self, name: str) -> None:
        entry = self.models.pop(name)
        for version in list(entry.versions):
            await self._retire_version(entry, version)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self, timeout: float) -> bool:
        """Drain and unload every model (SIGTERM path); False if any drain timed out."""
        closing = [
            ve.served.close(timeout)
            for entry in self.models.values()
            for ve in entry.versions.values()
            if ve.served is not None
        ]
        results = await asyncio.gather(*closing, *self._background, return_exceptions=True)
        return all(result is True or result is None for result in results)
