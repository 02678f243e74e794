"""A server-side adversary for red-teaming a Flower app with any registered model attack.

Attack research on Flower simulates the adversary on the server: a ClientApp never sees the
other clients' updates, so the attacker's knowledge (full: every reply; partial: only the
compromised nodes' own) is granted where the replies are. :class:`RedTeam` chooses the
compromised nodes (given, or a seeded count drawn as the simulator draws its compromised
workers) and, in each poisoned round, replaces their replies with the models that
:class:`fedpoison.adversary.Adversary` crafts, before the strategy's defense and rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from fedpoison import registry
from fedpoison.adversary import Adversary, poisoned_iterations
from fedpoison.errors import ConfigError
from fedpoison.registry import GOALS, KNOWLEDGE
from fedpoison.resolve import check_choice, check_float, check_int, resolve_attack
from fedpoison.rng import generator


class RedTeam:
    """Which nodes are compromised, and the model-poisoning attack they mount.

    ``compromised``: their Flower node ids; or ``count``: how many, drawn with ``seed`` from
    the federation's workers as the simulator draws its compromised workers. ``knowledge``:
    ``full`` (the attack sees every accepted reply) or ``partial`` (only the compromised
    nodes' own). ``poison_fraction`` < 1 poisons that fraction of ``rounds`` rounds, drawn
    as the simulator draws its poisoned iterations. ``attack_options`` are the attack's
    registered options (``fedpoison list attacks``); its target rule defaults to the
    strategy's rule with the strategy's options.
    """

    def __init__(self, attack: str, attack_options: Mapping[str, Any] | None = None, *,
                 compromised: Iterable[int] | None = None, count: int | None = None,
                 knowledge: str = "full", goal: str = "directed",
                 poison_fraction: float = 1.0, rounds: int | None = None,
                 seed: int = 0) -> None:
        if (compromised is None) == (count is None):
            raise ConfigError("compromised", "give the compromised node ids or a count "
                                             "(exactly one of them)")
        self.nodes: tuple[int, ...] | None = None
        if compromised is not None:
            nodes = [int(n) for n in compromised]
            if not nodes or len(set(nodes)) != len(nodes):
                raise ConfigError("compromised", f"must be distinct node ids, at least one; "
                                                 f"got {nodes}")
            self.nodes = tuple(sorted(nodes))
        self.count = None if count is None else check_int("count", count, 1, None)
        check_choice("knowledge", knowledge, KNOWLEDGE)
        check_choice("goal", goal, GOALS)
        self.poison_fraction = check_float("poison_fraction", poison_fraction, 0.0, 1.0)
        if rounds is not None:
            rounds = check_int("rounds", rounds, 1, None)
        if self.poison_fraction < 1.0 and rounds is None:
            raise ConfigError("rounds", "poison_fraction below 1 draws the poisoned rounds "
                                        "among `rounds` rounds: give rounds")
        self.rounds = rounds
        self.seed = check_int("seed", seed, 0, 2**63 - 1)
        name, _ = registry.REGISTRY.canonical("attack", attack)
        spec = registry.get("attack", name)
        if spec.data:
            raise ConfigError("attack", f"{name} poisons training data on the clients; a "
                                        "server-side adversary replaces models: use a "
                                        "model-poisoning attack (fedpoison list attacks)")
        self.attack = attack
        self.given_options = dict(attack_options or {})
        self.knowledge = knowledge
        self.goal = goal
        self.options: dict[str, Any] = {}
        self._server: tuple[str, dict[str, Any], tuple[Any, ...], int] | None = None
        self.adversary: Adversary | None = None

    @property
    def c(self) -> int:
        """How many nodes are compromised."""
        return len(self.nodes) if self.nodes is not None else int(self.count or 0)

    def bind(self, rule: str, rule_options: Mapping[str, Any],
             preaggregators: tuple[tuple[str, dict[str, Any]], ...], f: int) -> None:
        """Resolve the attack against the strategy's rule (its default target) and ``f``:
        unknown options, knowledge or goal raise here, before any round."""
        name, options, knowledge, goal = resolve_attack(
            self.attack, self.given_options, server_rule=rule, compromised=self.c,
            knowledge=self.knowledge, goal=self.goal, k=None, f=f)
        self.attack, self.options = name, options
        self.knowledge, self.goal = knowledge or self.knowledge, goal or self.goal
        self._server = (rule, dict(rule_options), preaggregators, f)

    def check(self, k: int) -> None:
        """The attack's own precondition with ``k`` models per round (``ConfigError``)."""
        assert self._server is not None, "bind() first"
        rule, _, _, f = self._server
        resolve_attack(self.attack, self.options, server_rule=rule, compromised=self.c,
                       knowledge=self.knowledge, goal=self.goal, k=k, f=f)

    def build(self, worker_of: Mapping[int, int]) -> Adversary:
        """The adversary over the federation's workers (node id → worker id 0..m-1), built
        at the first round; workers that join later are benign."""
        if self.adversary is not None:
            return grow(self.adversary, len(worker_of))
        assert self._server is not None, "bind() first"
        rule, rule_options, preaggs, f = self._server
        m = len(worker_of)
        if self.nodes is not None:
            unknown = [n for n in self.nodes if n not in worker_of]
            if unknown:
                raise ConfigError("compromised", f"node {unknown[0]} is not in the federation "
                                                 f"({m} nodes)")
            chosen = torch.tensor(sorted(worker_of[n] for n in self.nodes), dtype=torch.int64)
        else:
            assert self.count is not None
            if self.count >= m:
                raise ConfigError("count", f"must be less than the {m} nodes of the "
                                           f"federation, got {self.count}")
            chosen = torch.randperm(m, generator=generator(self.seed, "compromised"))
            chosen = chosen[: self.count].sort()[0]
        # Every round is poisoned unless a fraction of a known number of rounds is asked.
        rounds = self.rounds if self.rounds is not None else 1
        schedule = poisoned_iterations(rounds, self.poison_fraction,
                                       generator(self.seed, "schedule"))
        self.adversary = Adversary.build(
            self.attack, self.options, compromised=chosen, workers=m, schedule=schedule,
            knowledge=self.knowledge, goal=self.goal, f=f,
            generator=generator(self.seed, "attack"), server_rule=rule,
            server_rule_options=rule_options, server_preaggs=preaggs)
        return self.adversary

    def poisons(self, t: int) -> bool:
        """Whether round ``t`` (1-based) is poisoned; rounds past a fully poisoned schedule
        are poisoned too, rounds past a partial one are an error."""
        assert self.adversary is not None
        schedule = self.adversary.schedule
        if t > schedule.numel():
            if self.poison_fraction < 1.0:
                raise ConfigError("rounds", f"round {t} is past the {schedule.numel()} rounds "
                                            "the poisoned rounds were drawn among")
            self.adversary.schedule = torch.ones(t, dtype=torch.bool)
        return bool(self.adversary.schedule[t - 1])

    def compromised_nodes(self, worker_of: Mapping[int, int]) -> list[int]:
        """The compromised node ids (after :meth:`build`)."""
        assert self.adversary is not None
        ids = set(self.adversary.compromised.tolist())
        return sorted(n for n, w in worker_of.items() if w in ids)


def grow(adversary: Adversary, m: int) -> Adversary:
    """``adversary`` over ``m`` workers: new workers (that joined later) are benign."""
    have = adversary.is_compromised.numel()
    if m > have:
        adversary.is_compromised = torch.cat(
            [adversary.is_compromised, torch.zeros(m - have, dtype=torch.bool)])
    return adversary


def idle(m: int, f: int) -> Adversary:
    """An adversary that attacks nothing (every worker benign), for the strategy alone."""
    return Adversary.build("none", {}, compromised=torch.zeros(0, dtype=torch.int64),
                           workers=m, schedule=torch.zeros(0, dtype=torch.bool),
                           knowledge=None, goal=None, f=f, generator=torch.Generator(),
                           server_rule="", server_rule_options={})
