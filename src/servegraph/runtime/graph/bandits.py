"""Multi-armed bandits: per-arm reward statistics and the policies that choose from them.

Pure and synchronous: the random generator is passed in (seeded when the router's config
says so), so a choice depends only on the state and the generator. A "pull" here is a
rewarded pull: statistics move when feedback arrives, not when a request is routed, since
an arm's mean reward is only defined over the requests that were rewarded (as in Seldon's
routers). How many requests each arm served is counted separately by the router.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from servegraph.runtime.protocol.errors import InvalidInput


@dataclass(slots=True)
class ArmStats:
    """What one arm has earned: rewarded pulls and the sum of their rewards."""

    pulls: int = 0
    reward_sum: float = 0.0

    @property
    def mean(self) -> float | None:
        return self.reward_sum / self.pulls if self.pulls else None

    def reward(self, value: float) -> None:
        self.pulls += 1
        self.reward_sum += value


def check_unit_reward(reward: float, node: str, policy: str) -> None:
    """Every bandit takes rewards in [0, 1], as documented: one rule, one message."""
    if not 0.0 <= reward <= 1.0:
        raise InvalidInput(f"node '{node}' ({policy}) takes rewards between 0 and 1, got {reward}")


class EpsilonGreedy:
    """Explore a uniformly random arm with probability ``epsilon``, else exploit the best mean.

    An arm never rewarded counts as the best (optimistic start), so every arm is tried before
    one is trusted; ties are broken at random so no arm is favoured by its position.
    """

    def __init__(self, epsilon: float) -> None:
        self.epsilon = epsilon

    def choose(self, arms: Mapping[str, ArmStats], rng: np.random.Generator) -> str:
        names = list(arms)
        if rng.random() < self.epsilon:
            return names[int(rng.integers(len(names)))]
        means = [arms[n].mean for n in names]
        best_value = max(float("inf") if m is None else m for m in means)
        best = [n for n, m in zip(names, means) if (float("inf") if m is None else m) == best_value]
        return best[0] if len(best) == 1 else best[int(rng.integers(len(best)))]

    def check_reward(self, reward: float, node: str) -> None:
        check_unit_reward(reward, node, "EpsilonGreedy")


class ThompsonSampling:
    """Beta-Bernoulli Thompson sampling: draw each arm's success rate from its posterior
    Beta(1 + rewards, 1 + pulls - rewards) and play the arm with the highest draw.

    Rewards in [0, 1] are used as fractional successes, the usual extension beyond 0/1.
    """

    def choose(self, arms: Mapping[str, ArmStats], rng: np.random.Generator) -> str:
        names = list(arms)
        successes = np.array([arms[n].reward_sum for n in names])
        pulls = np.array([arms[n].pulls for n in names])
        draws = rng.beta(1.0 + successes, 1.0 + pulls - successes)
        return names[int(np.argmax(draws))]

    def check_reward(self, reward: float, node: str) -> None:
        check_unit_reward(reward, node, "ThompsonSampling")


Bandit = EpsilonGreedy | ThompsonSampling
