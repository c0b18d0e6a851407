"""Shadow traffic: copies of requests sent to other children in the background.

The caller never waits for a copy: answers and errors are discarded, only counted. Copies
are bounded: beyond ``max_in_flight`` at once, new copies are dropped (and counted), so a
slow shadow child can never build up memory or tasks in the router.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from servegraph.runtime.graph.metrics import GraphMetrics

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64
"""Default bound on shadow copies running at once (per router)."""

OUTCOMES = ("success", "failed", "dropped")


class ShadowCopies:
    def __init__(self, node: str, metrics: GraphMetrics, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.node = node
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self.counts: dict[str, dict[str, int]] = {}

    def _count(self, child: str, outcome: str) -> None:
        per_child = self.counts.setdefault(child, dict.fromkeys(OUTCOMES, 0))
        per_child[outcome] += 1
        self.metrics.shadow_requests.labels(self.node, child, outcome).inc()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def send(self, child: str, call: Callable[[], Awaitable[Any]]) -> None:
        """Start ``call()`` in the background, or drop it when too many copies are running."""
        if len(self._tasks) >= self.max_in_flight:
            self._count(child, "dropped")
            return
        task = asyncio.get_running_loop().create_task(self._run(child, call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, child: str, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a shadow's failure is data, never the caller's problem
            self._count(child, "failed")
            log.debug("node '%s': shadow copy to '%s' failed: %s", self.node, child, exc)
        else:
            self._count(child, "success")

    async def close(self) -> None:
        """Cancel the copies still running (shutdown: nobody waits for them)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def to_dict(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "max_in_flight": self.max_in_flight, "children": self.counts}
