"""The request and response parameters servegraph reserves for graph nodes.

Every name carries the ``servegraph.`` prefix so it never collides with Triton's own
parameters (``timeout``, ``priority``, ``sequence_*``) or with a caller's. Graph nodes do
not forward these to their children: each hop sets its own.
"""

from __future__ import annotations

import math
from typing import Any

from servegraph.runtime.protocol.errors import InvalidInput

PREFIX = "servegraph."

ROUTE = "servegraph.route"
"""Response: the path a request took below a node, child node names joined with "/"."""

SKIPPED = "servegraph.skipped"
"""Response of a Combiner that skips failing children: the children left out, comma-separated."""

FEEDBACK_ID = "servegraph.feedback_id"
"""Request: the id of an earlier request to reward. Such a request carries no inputs."""

REWARD = "servegraph.reward"
"""Request: the reward for ``FEEDBACK_ID`` (a number; bandits take 0..1)."""

FEEDBACK = "servegraph.feedback"
"""Response to a feedback request: ``"accepted"``."""


def join_route(child: str, below: Any) -> str:
    """``child`` or ``child/below`` when the child reported a route of its own (a nested graph)."""
    return f"{child}/{below}" if isinstance(below, str) and below else child


def parse_reward(value: Any) -> float:
    """A reward as a float: a finite number (a numeric string is accepted from gRPC's string_param)."""
    if isinstance(value, str):
        try:
            if not value.isascii():  # float() reads Unicode digits ("١" as 1.0) too
                raise ValueError(value)
            value = float(value)
        except ValueError:
            raise InvalidInput(f"reward must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"reward must be a finite number, got {value!r}")
    return float(value)
