"""The Router role: pick one child per request, say which in the response, learn from rewards.

Every response carries ``servegraph.route`` (the child that served it, and the route below
it for nested graphs, joined with "/") and an id: the caller's, or one the router makes up
(uuid4) when the caller sent none, so that feedback is always possible. The router keeps
which arm served each recent id itself (``FeedbackMemory``), so a reward needs only the id.

Every strategy records rewards per arm (an A/B test can compare arms by reward too); the
bandit strategies also choose by them. Arm statistics persist in ``state_file`` when set.
"""

from __future__ import annotations

import logging
import time
import uuid
from functools import partial
from typing import Any

import numpy as np

from servegraph.runtime.graph.bandits import ArmStats
from servegraph.runtime.graph.client import ChildAnswer
from servegraph.runtime.graph.config import NodeConfig, RouterSettings
from servegraph.runtime.graph.feedback import FeedbackMemory, RouteRecord
from servegraph.runtime.graph.node import FEEDBACK_TIMEOUT, GraphNode
from servegraph.runtime.graph.shadow import ShadowCopies
from servegraph.runtime.graph.state import DebouncedSaver, StateFile, StateStore
from servegraph.runtime.graph.strategies import Primary, build_strategy
from servegraph.runtime.metrics import ServerMetrics
from servegraph.runtime.protocol import parameters as params
from servegraph.runtime.protocol.errors import (
    ChildUnavailable,
    InvalidInput,
    ServegraphError,
    UnknownRequestId,
)
from servegraph.runtime.protocol.types import InferRequest, InferResponse

log = logging.getLogger(__name__)

SHADOW_TIMEOUT = 30.0
"""Deadline of a shadow copy when the caller set none: a copy must not outlive its use."""


class RouterNode(GraphNode):
    role = "router"

    def __init__(self, config: NodeConfig, metrics: ServerMetrics, **options: Any) -> None:
        super().__init__(config, metrics, **options)
        if config.router is None:
            raise ValueError(f"node '{config.node}' is a router without router settings")
        self.settings: RouterSettings = config.router
        self.rng = np.random.default_rng(self.settings.seed)
        self.strategy = build_strategy(self.node, self.settings, self.children, self.rng)
        self.arms = {c: ArmStats() for c in self.children}
        self.routed = dict.fromkeys(self.children, 0)
        self.failovers = 0
        self.unknown_feedback = 0
        self.memory = FeedbackMemory(self.settings.feedback_memory)
        self.shadow = ShadowCopies(self.node, self.graph_metrics) if isinstance(self.strategy, Primary) else None
        self.saver: DebouncedSaver | None = None
        state: StateStore | None = None
        if self.settings.state_config_map:
            from servegraph.runtime.graph.state_configmap import ConfigMapState  # only in a cluster

            state = ConfigMapState(self.settings.state_config_map, self.node)
        elif self.settings.state_file:
            state = StateFile(self.resolve(self.settings.state_file), self.node)
        if state is not None:
            for arm, stats in state.load().items():
                if arm in self.arms:
                    self.arms[arm] = stats
                else:
                    log.warning("node '%s': state file has arm '%s', which is no longer a child", self.node, arm)
            self.saver = DebouncedSaver(state, self.arms)
        for arm in self.children:
            self._publish(arm)
        self._routed_counters = {arm: self.graph_metrics.router_requests.labels(self.node, arm) for arm in self.children}

    def signature_child(self) -> str:
        return self.strategy.primary if isinstance(self.strategy, Primary) else self.children[0]

    # ------------------------------------------------------------ serving
    async def _infer(self, request: InferRequest) -> InferResponse:
        request_id = request.id or uuid.uuid4().hex
        arm = self.strategy.choose(request, self.arms)
        if isinstance(self.strategy, Primary):
            self._copy_to_shadows(request, request_id, self.strategy)
        answer, arm = await self._serve_from(arm, request, request_id)
        route = params.join_route(arm, answer.parameters.get(params.ROUTE))
        self.memory.remember(request_id, RouteRecord(arm, route))
        self.routed[arm] += 1
        self._routed_counters[arm].inc()
        return self.response(
            request,
            answer.outputs,
            answer.datatypes,
            request_id=request_id,
            parameters={**answer.parameters, params.ROUTE: route},
        )

    async def _serve_from(self, arm: str, request: InferRequest, request_id: str) -> tuple[ChildAnswer, str]:
        """The chosen child's answer; with failover, another ready child's when it is down or
        not ready (a hung child is not called at all: it would only use up the deadline).

        A busy child (``ChildBusy``, its queue full) is not down: its 503 and retry hint pass
        back to the caller, as a full queue of the node's own would.
        """
        first: ChildUnavailable | None = None
        if self.settings.failover and not self.child_is_ready(arm):
            first = ChildUnavailable(f"child '{arm}' of node '{self.node}' is not ready", child=arm)
        else:
            try:
                return await self.call(arm, request, request_id=request_id), arm
            except ChildUnavailable as exc:
                if not self.settings.failover:
                    raise
                first = exc
        tried = [arm]
        for other in self.children:
            if other in tried or not self.child_is_ready(other):
                continue
            tried.append(other)
            try:
                answer = await self.call(other, request, request_id=request_id)
            except ChildUnavailable:
                continue
            self.failovers += 1
            log.info("node '%s': child '%s' is unavailable, served from '%s'", self.node, arm, other)
            return answer, other
        raise ChildUnavailable(f"{first.message} (failover tried {tried[1:] or 'no other ready child'})", child=arm)

    def _copy_to_shadows(self, request: InferRequest, request_id: str, strategy: Primary) -> None:
        assert self.shadow is not None
        percent = self.settings.shadow_percent
        if not strategy.shadows or percent <= 0 or (percent < 100 and self.rng.random() * 100 >= percent):
            return
        deadline = request.deadline or time.monotonic() + SHADOW_TIMEOUT
        for child in strategy.shadows:
            self.shadow.send(child, partial(self.call, child, request, request_id=request_id, deadline=deadline))

    # ------------------------------------------------------------ feedback
    async def feedback(self, request_id: str, reward: float) -> dict[str, Any]:
        """Reward the arm that served ``request_id``; pass it on when that arm is a router too."""
        try:
            self.strategy.check_reward(reward)
        except InvalidInput:
            self.graph_metrics.router_feedback.labels(self.node, "invalid").inc()
            raise
        record = self.memory.take(request_id)
        if record is None:
            self.unknown_feedback += 1
            self.graph_metrics.router_feedback.labels(self.node, "unknown_id").inc()
            raise UnknownRequestId(
                f"no routing record for request id '{request_id}' at router '{self.node}' "
                f"(remembered: last {self.memory.capacity} request ids, each rewarded once)"
            )
        stats = self.arms[record.arm]
        stats.reward(reward)
        self._publish(record.arm)
        self.graph_metrics.router_feedback.labels(self.node, "accepted").inc()
        if self.saver is not None:
            self.saver.changed()
        passed_on = False
        if record.nested:
            try:
                await self.clients[record.arm].feedback(request_id, reward, time.monotonic() + FEEDBACK_TIMEOUT)
                passed_on = True
            except ServegraphError as exc:
                log.info("node '%s': reward for '%s' not passed on to '%s': %s", self.node, request_id, record.arm, exc.message)
        return {
            "node": self.node,
            "id": request_id,
            "reward": reward,
            "route": record.route,
            "arm": record.arm,
            "pulls": stats.pulls,
            "mean_reward": stats.mean,
            "passed_on": passed_on,
        }

    def _publish(self, arm: str) -> None:
        stats = self.arms[arm]
        self.graph_metrics.router_pulls.labels(self.node, arm).set(stats.pulls)
        self.graph_metrics.router_reward.labels(self.node, arm).set(stats.reward_sum)

    # ------------------------------------------------------------ lifecycle
    async def close_role(self) -> None:
        if self.shadow is not None:
            await self.shadow.close()
        if self.saver is not None:
            await self.saver.flush()

    def role_extras(self) -> dict[str, Any]:
        extras: dict[str, Any] = {
            "strategy": self.settings.strategy,
            "arms": {
                arm: {
                    "routed": self.routed[arm],
                    "pulls": stats.pulls,
                    "reward_sum": stats.reward_sum,
                    "mean_reward": stats.mean,
                }
                for arm, stats in self.arms.items()
            },
            "failovers": self.failovers,
            "feedback": {
                "remembered": len(self.memory),
                "capacity": self.memory.capacity,
                "forgotten": self.memory.forgotten,
                "unknown_ids": self.unknown_feedback,
                "state_file": str(getattr(self.saver.file, "path", "")) if self.saver else "",
                "state_saves": self.saver.saves if self.saver else 0,
            },
        }
        if self.shadow is not None:
            extras["shadow"] = self.shadow.to_dict()
        return extras
