"""How a router picks the child for one request: one class per strategy of RouterSettings.

Built once from the config (with every reference to a child checked, so a bad config fails
at start with a message naming the node), then asked per request. Choices are synchronous
and draw from the router's one random generator, seeded when the config gives a seed, so a
fixed-seed run routes the same way every time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from servegraph.runtime.graph.bandits import ArmStats, EpsilonGreedy, ThompsonSampling
from servegraph.runtime.graph.config import RouterSettings
from servegraph.runtime.protocol.errors import InvalidInput
from servegraph.runtime.protocol.types import InferRequest


class Strategy(Protocol):
    def choose(self, request: InferRequest, arms: Mapping[str, ArmStats]) -> str: ...

    def check_reward(self, reward: float) -> None:
        """Raise InvalidInput for a reward this strategy cannot learn from."""
        ...


class Weighted:
    """A/B tests and canaries: each child gets its percentage of the traffic."""

    def __init__(self, node: str, weights: Mapping[str, float], children: list[str], rng: np.random.Generator) -> None:
        unknown = sorted(set(weights) - set(children))
        if unknown:
            raise ValueError(f"router '{node}' has weights for {unknown}, which are not its children {children}")
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"router '{node}' has a negative weight: {dict(weights)}")
        chosen = {c: float(weights.get(c, 0.0)) for c in children} if weights else dict.fromkeys(children, 1.0)
        total = sum(chosen.values())
        if total <= 0:
            raise ValueError(f"router '{node}' has weights that add up to {total}; they must add up to more than 0")
        self.children = list(chosen)
        self.cumulative = np.cumsum([chosen[c] / total for c in self.children])
        self.rng = rng

    def choose(self, request: InferRequest, arms: Mapping[str, ArmStats]) -> str:
        index = int(np.searchsorted(self.cumulative, self.rng.random(), side="right"))
        return self.children[min(index, len(self.children) - 1)]

    def check_reward(self, reward: float) -> None:
        pass


class Header:
    """Route on a request header (HTTP header or gRPC metadata) or request parameter."""

    def __init__(self, node: str, settings: RouterSettings, children: list[str]) -> None:
        if not settings.header:
            raise ValueError(f"router '{node}' uses strategy Header but names no header")
        bad = sorted({c for c in settings.routes.values() if c not in children})
        if bad:
            raise ValueError(f"router '{node}' routes to {bad}, which are not its children {children}")
        if settings.default and settings.default not in children:
            raise ValueError(f"router '{node}' has default '{settings.default}', which is not one of its children {children}")
        self.node = node
        self.header = settings.header
        self.routes = dict(settings.routes)
        self.default = settings.default

    def value(self, request: InferRequest) -> str | None:
        headers = request.headers
        found = headers.get(self.header)
        if found is None:
            found = headers.get(self.header.lower())  # gRPC metadata keys are lower-case
        if found is None and self.header in request.parameters:
            found = str(request.parameters[self.header])
        return found

    def choose(self, request: InferRequest, arms: Mapping[str, ArmStats]) -> str:
        value = self.value(request)
        if value is not None and value in self.routes:
            return self.routes[value]
        if self.default:
            return self.default
        if value is None:
            raise InvalidInput(
                f"router '{self.node}' routes on header or parameter '{self.header}', which the "
                "request does not carry, and has no default route"
            )
        raise InvalidInput(
            f"router '{self.node}' has no route for {self.header} = '{value}' and no default "
            f"route; routes are for {sorted(self.routes)}"
        )

    def check_reward(self, reward: float) -> None:
        pass


class Bandit:
    """EpsilonGreedy or ThompsonSampling over the children, learning from feedback."""

    def __init__(self, node: str, policy: EpsilonGreedy | ThompsonSampling, rng: np.random.Generator) -> None:
        self.node = node
        self.policy = policy
        self.rng = rng

    def choose(self, request: InferRequest, arms: Mapping[str, ArmStats]) -> str:
        return self.policy.choose(arms, self.rng)

    def check_reward(self, reward: float) -> None:
        self.policy.check_reward(reward, self.node)


class Primary:
    """Shadow: always the primary; the copies to the other children are the router's business."""

    def __init__(self, node: str, settings: RouterSettings, children: list[str]) -> None:
        self.primary = settings.primary or children[0]
        if self.primary not in children:
            raise ValueError(f"router '{node}' has primary '{self.primary}', which is not one of its children {children}")
        self.shadows = [c for c in children if c != self.primary]

    def choose(self, request: InferRequest, arms: Mapping[str, ArmStats]) -> str:
        return self.primary

    def check_reward(self, reward: float) -> None:
        pass


def build_strategy(node: str, settings: RouterSettings, children: list[str], rng: np.random.Generator) -> Strategy:
    match settings.strategy:
        case "Weighted":
            return Weighted(node, settings.weights, children, rng)
        case "Header":
            return Header(node, settings, children)
        case "EpsilonGreedy":
            return Bandit(node, EpsilonGreedy(settings.epsilon), rng)
        case "ThompsonSampling":
            return Bandit(node, ThompsonSampling(), rng)
        case "Shadow":
            return Primary(node, settings, children)
    raise ValueError(f"router '{node}' has an unknown strategy {settings.strategy!r}")
