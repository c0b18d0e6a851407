"""Which arm served each recent request: the router's own memory, so feedback needs only an id.

Seldon's lesson: when the routing decision travels with the response and the caller must
send it back, it gets lost on the way (its executor dropped it and feedback never reached
the router). Here the router keeps it, bounded: the oldest ids are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RouteRecord:
    """The arm (child) that served a request, and the full route below it."""

    arm: str
    route: str

    @property
    def nested(self) -> bool:
        """The arm is itself a graph node that reported a route (it may take feedback too)."""
        return self.route != self.arm


class FeedbackMemory:
    """A bounded map of request id -> RouteRecord; each record takes one reward."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"feedback memory must hold at least 1 request id, got {capacity}")
        self.capacity = capacity
        self._records: OrderedDict[str, RouteRecord] = OrderedDict()
        self.forgotten = 0
        """Records dropped to stay within capacity (before any reward came for them)."""

    def __len__(self) -> int:
        return len(self._records)

    def remember(self, request_id: str, record: RouteRecord) -> None:
        records = self._records
        if request_id in records:
            records.move_to_end(request_id)  # a reused id: the latest request wins
        records[request_id] = record
        if len(records) > self.capacity:
            records.popitem(last=False)
            self.forgotten += 1

    def take(self, request_id: str) -> RouteRecord | None:
        """The record for ``request_id``, removed so a request cannot be rewarded twice."""
        return self._records.pop(request_id, None)
