"""Bandit state on disk, so a restarted router keeps what it learned.

Written atomically (a temporary file in the same folder, then ``os.replace``), so a crash
mid-write leaves the previous state, never half a file. Saves are debounced: a burst of
feedback costs one write, at most ``SAVE_DELAY`` seconds after the first of it, and
``flush()`` on shutdown writes whatever is pending.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from servegraph.runtime.graph.bandits import ArmStats

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SAVE_DELAY = 0.1
"""Seconds between the first unsaved feedback and the write that saves it."""


class StateStore(Protocol):
    """Where a router's arm statistics persist: a local file, or a ConfigMap in a cluster."""

    node: str

    def load(self) -> dict[str, ArmStats]: ...

    def save(self, arms: dict[str, ArmStats]) -> None: ...


class StateFile:
    """One router's arm statistics as a small JSON file."""

    def __init__(self, path: Path, node: str) -> None:
        self.path = path
        self.node = node

    def load(self) -> dict[str, ArmStats]:
        """The saved arms, or none when there is no file yet. A file that cannot be read is
        reported and ignored: a router that cannot remember still serves."""
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown state format version {data.get('version')!r}")
            return {
                str(arm): ArmStats(int(values["pulls"]), float(values["reward_sum"]))
                for arm, values in data["arms"].items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("node '%s': ignoring unreadable bandit state %s: %s", self.node, self.path, exc)
            return {}

    def save(self, arms: dict[str, ArmStats]) -> None:
        """Write atomically (blocking; call from a worker thread on the serving path)."""
        data: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "node": self.node,
            "arms": {arm: {"pulls": s.pulls, "reward_sum": s.reward_sum} for arm, s in arms.items()},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


class DebouncedSaver:
    """Saves a router's arms soon after they change, one write at a time.

    A change that arrives while a write is under way is not lost: the saving task goes
    round again until a write has started after the last change.
    """

    def __init__(self, file: StateStore, arms: dict[str, ArmStats]) -> None:
        self.file = file
        self.arms = arms
        self._pending: asyncio.Task[None] | None = None
        self._dirty = False
        self._now = asyncio.Event()
        self.saves = 0
        self.errors = 0

    def _snapshot(self) -> dict[str, ArmStats]:
        return {arm: ArmStats(s.pulls, s.reward_sum) for arm, s in self.arms.items()}

    def changed(self) -> None:
        self._dirty = True
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_task(self._save_while_dirty())

    async def _save_while_dirty(self) -> None:
        while self._dirty:
            try:
                await asyncio.wait_for(self._now.wait(), SAVE_DELAY)
            except TimeoutError:
                pass
            self._dirty = False
            snapshot = self._snapshot()  # on the loop thread, after the delay: all of the burst
            before = getattr(self.file, "others", None)
            try:
                await asyncio.to_thread(self.file.save, snapshot)
                self.saves += 1
                self._merge_others(before, getattr(self.file, "others", None))
            except OSError as exc:
                self.errors += 1
                log.error("node '%s': cannot save bandit state: %s", self.file.node, exc)

    def _merge_others(self, before: dict[str, ArmStats] | None, after: dict[str, ArmStats] | None) -> None:
        """A shared store's save also read the other replicas' rewards: take them into the view.

        Our own share (the view minus what others had when we last looked) stays ours, so
        feedback that arrived during the save is kept.
        """
        if before is None or after is None or after is before:
            return
        for arm, stats in self.arms.items():
            old, new = before.get(arm, ArmStats()), after.get(arm, ArmStats())
            stats.pulls += new.pulls - old.pulls
            stats.reward_sum += new.reward_sum - old.reward_sum

    async def flush(self) -> None:
        """Write whatever is unsaved now (shutdown). The pending save is hurried, not
        cancelled: a cancelled write would go on in its thread and could land after a newer one."""
        pending = self._pending
        if pending is None or pending.done():
            return  # nothing changed since the last save
        self._now.set()
        await pending
        self._now.clear()
