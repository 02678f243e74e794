"""A Flower strategy that aggregates with fedpoison's rules, pre-aggregators and defenses.

:class:`FedpoisonStrategy` is Flower's message-API ``FedAvg`` with its training half
replaced: ``configure_train`` samples nodes with fedpoison's seeded stream (as the simulator
samples workers) and may attach per-node records (the batch schedule); ``aggregate_train``
checks every reply, drops the bad ones with a logged and counted reason, orders the rest by
worker id into fedpoison's model matrix ``W`` and hands it to
:func:`fedpoison.simulation.attack_and_aggregate`, the simulator's own server side: an
optional :class:`~fedpoison.flower.adversary.RedTeam` crafts the compromised rows, then the
:class:`fedpoison.server.Server` (defense → pre-aggregators → rule, each with its options
and its state across rounds) computes the next global model. Models are not weighted by
example counts unless ``weighted=True``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency
from torch import Tensor

from fedpoison import registry
from fedpoison.adversary import Adversary
from fedpoison.config import RunConfig, parse_component_string
from fedpoison.defenses.base import BoundDefense
from fedpoison.errors import ConfigError
from fedpoison.flower.adversary import RedTeam, grow, idle
from fedpoison.flower.arrays import BadReply, Layout
from fedpoison.notes import settle_notes
from fedpoison.resolve import check_int, resolve_defense
from fedpoison.rng import generator
from fedpoison.server import Notes, Server, ServerData, bind_pipeline
from fedpoison.simulation import Detection, attack_and_aggregate, summarize_notes

log = logging.getLogger("flwr.fedpoison")

Record = ArrayRecord | ConfigRecord | MetricRecord
NodeRecords = Callable[[int, Tensor], Sequence[Mapping[str, Record]]]
"""``(server_round, workers [k]) -> one mapping of extra records per sampled worker`` (in
the order of ``workers``), added to that node's train message (e.g. its batch schedule)."""

PHASES = ("attack", "defense", "aggregate")


@dataclass
class _Round:
    """What ``configure_train`` sent, for ``aggregate_train`` to check the replies against."""

    server_round: int
    previous: Tensor  # the global model the nodes trained from (w_Re), flat float32
    layout: Layout
    expected: dict[int, int]  # node id -> worker id of the sampled nodes


def _preaggregators(items: Iterable[Any]) -> tuple[tuple[str, dict[str, Any]], ...]:
    """``"name"``, ``"name:k=v"`` or ``(name, options)`` items as ``(name, options)``."""
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(parse_component_string(item, "preaggregators"))
        elif isinstance(item, tuple | list) and len(item) == 2:
            out.append((str(item[0]), dict(item[1] or {})))
        else:
            raise ConfigError("preaggregators", f"got {item!r}; give 'name', 'name:k=v' or "
                                                "(name, options)")
    return tuple(out)


class FedpoisonStrategy(FedAvg):
    """Flower's FedAvg, aggregating with a registered fedpoison rule, pre-aggregators and
    defense (each with its options), and optionally red-teamed by a model attack.

    ``f``: how many of the aggregated models the server assumes Byzantine (the paper's c).
    ``workers``: node id → worker id (0..m-1), e.g. from
    :func:`~fedpoison.flower.nodes.discover_workers`; without it nodes are numbered in
    ascending id order at the first round and later ones after them. ``seed`` seeds the node
    sampling, the server's generator and (unless the red team has its own) nothing else.
    ``node_records`` adds per-node records to the train messages
    (:class:`~fedpoison.flower.batches.BatchSchedule`). ``server_data``: the server's
    held-out examples, for defenses and rules that evaluate models. ``weighted``: scale each
    update by ``k·nᵢ/Σn`` (``nᵢ`` the reply's ``weighted_by_key`` metric) before the rule, so
    that the mean becomes FedAvg's weighted mean; off by default, since re-weighting by
    claimed example counts gives an attacker back the influence a robust rule takes away.
    The other keyword arguments are Flower ``FedAvg``'s (sampling fractions, minimum node
    counts, record keys, metric aggregation).
    """

    def __init__(self, *, f: int, rule: str = "mean", rule_options: Mapping[str, Any] | None = None,
                 preaggregators: Iterable[Any] = (), defense: str = "none",
                 defense_options: Mapping[str, Any] | None = None,
                 red_team: RedTeam | None = None, seed: int = 0,
                 workers: Mapping[int, int] | None = None,
                 node_records: NodeRecords | None = None,
                 server_data: ServerData | None = None, weighted: bool = False,
                 **fedavg: Any) -> None:
        super().__init__(**fedavg)
        self.f = check_int("f", f, 0, None)
        self.seed = check_int("seed", seed, 0, 2**63 - 1)
        preaggs = _preaggregators(preaggregators)
        pipeline = bind_pipeline(rule, rule_options or {}, preaggs)
        self.rule_options = dict(pipeline.rule.options)
        self.preaggregators = tuple((p.name, dict(p.options)) for p in pipeline.preaggs)
        defense_name, defense_opts = resolve_defense(
            defense, defense_options or {}, pipeline.rule.name, self.rule_options,
            self.preaggregators, None, self.f)
        bound_defense = None
        if defense_name != "none":
            bound_defense = BoundDefense(registry.get("defense", defense_name), defense_opts)
        needs_data = "server_data" in pipeline.needs or (
            bound_defense is not None and bound_defense.spec.needs_validation)
        if needs_data and server_data is None:
            what = f"defense {defense_name}" if bound_defense is not None else \
                f"rule {pipeline.name}"
            raise ConfigError("server_data", f"{what} evaluates models on the server's "
                                             "held-out examples: pass server_data=ServerData(...)")
        self.server = Server(pipeline, self.f, generator(self.seed, "server"), bound_defense,
                             server_data)
        self.defense_options = defense_opts
        self.red_team = red_team
        if red_team is not None:
            red_team.bind(pipeline.rule.name, self.rule_options, self.preaggregators, self.f)
        self.fixed_workers = workers is not None
        self.worker_of: dict[int, int] = {}
        if workers is not None:
            self.worker_of = {int(n): int(w) for n, w in workers.items()}
            ids = sorted(self.worker_of.values())
            if ids != list(range(len(ids))):
                raise ConfigError("workers", "worker ids must be 0..m-1, each once")
        self.node_records = node_records
        self.weighted = bool(weighted)
        self.sample_generator = generator(self.seed, "sample")
        self.adversary: Adversary | None = None
        self.notes: Notes = {}
        self.detection = Detection()
        self.timings = dict.fromkeys(PHASES, 0.0)
        self.dropped: Counter[str] = Counter()
        self.drops: list[tuple[int, int, str, str]] = []  # (round, node, kind, reason)
        self.accepted = 0
        self.rounds = 0
        self.skipped: list[tuple[int, str]] = []
        self._checked_k: int | None = None
        self._pending: _Round | None = None

    @classmethod
    def from_config(cls, config: RunConfig, **kwargs: Any) -> FedpoisonStrategy:
        """The strategy (and red team) of a simulator config: its rule, pre-aggregators,
        defense, attack with options, knowledge, goal, f, compromised count, poison
        fraction, seed and per-iteration sample, so that a Flower run and
        ``fedpoison.run(config)`` can be compared. ``kwargs`` go to the constructor (and
        override what the config gives)."""
        cfg = config.resolve()
        assert cfg.f is not None and cfg.iterations is not None
        red_team = None
        if cfg.attack != "none":
            red_team = RedTeam(cfg.attack, cfg.attack_options, count=cfg.compromised,
                               knowledge=cfg.knowledge or "full", goal=cfg.goal or "directed",
                               poison_fraction=cfg.poison_fraction, rounds=cfg.iterations,
                               seed=cfg.seed)
        k, m = cfg.per_iteration, cfg.workers
        args: dict[str, Any] = {
            "f": cfg.f, "rule": cfg.rule, "rule_options": cfg.rule_options,
            "preaggregators": cfg.preaggregators, "defense": cfg.defense,
            "defense_options": cfg.defense_options, "red_team": red_team, "seed": cfg.seed,
            "fraction_train": k / m, "min_train_nodes": k, "min_available_nodes": m,
            "fraction_evaluate": 0.0}
        args.update(kwargs)
        return cls(**args)

    # ------------------------------------------------------------------ configure
    def summary(self) -> None:
        super().summary()
        log.info("\t├──> fedpoison: %s, f=%d, defense %s, %s", self.server.pipeline.name,
                 self.f, self.server.defense.name if self.server.defense else "none",
                 "weighted by example counts" if self.weighted else "unweighted")
        if self.red_team is not None:
            log.info("\t└──> red team: %s (%s knowledge) on %d nodes", self.red_team.attack,
                     self.red_team.knowledge, self.red_team.c)

    def _index(self, nodes: Iterable[int]) -> None:
        """Give nodes without a worker id the next ones (ascending node id)."""
        if self.fixed_workers:
            return
        for n in sorted(set(nodes) - set(self.worker_of)):
            self.worker_of[n] = len(self.worker_of)

    def _connected(self, grid: Grid, wanted: int) -> list[int]:
        """The connected nodes that have a worker id, once at least ``wanted`` are there."""
        waited = False
        while True:
            nodes = list(grid.get_node_ids())
            self._index(nodes)
            eligible = [n for n in nodes if n in self.worker_of]
            if len(eligible) >= wanted:
                return eligible
            if not waited:
                log.info("waiting for nodes: %d of %d connected", len(eligible), wanted)
                waited = True
            time.sleep(1.0)

    def sample(self, grid: Grid) -> list[tuple[int, int]]:
        """(worker id, node id) of this round's nodes, ascending worker id: all of them, or
        a seeded uniform sample drawn as the simulator draws its workers."""
        eligible = self._connected(grid, max(self.min_available_nodes, self.min_train_nodes))
        pairs = sorted((self.worker_of[n], n) for n in eligible)
        k = max(int(len(pairs) * self.fraction_train), self.min_train_nodes)
        if k >= len(pairs):
            return pairs
        pick = torch.randperm(len(pairs), generator=self.sample_generator)[:k].sort()[0]
        return [pairs[i] for i in pick.tolist()]

    def _check(self, k: int) -> None:
        """The rule's, defense's and attack's preconditions for ``k`` models per round."""
        if k == self._checked_k:
            return
        try:
            self.server.pipeline.check(k, self.f)
        except ValueError as e:
            raise ConfigError("rule", str(e)) from None
        if self.server.defense is not None:
            resolve_defense(self.server.defense.name, self.defense_options,
                            self.server.pipeline.rule.name, self.rule_options,
                            self.preaggregators, k, self.f)
        if self.red_team is not None:
            self.red_team.check(k)
        self._checked_k = k

    def _adversary(self) -> Adversary:
        """The red team's adversary, or an idle one, over the workers indexed so far."""
        m = len(self.worker_of)
        if self.red_team is not None:
            return self.red_team.build(self.worker_of)
        return grow(self.adversary, m) if self.adversary is not None else idle(m, self.f)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample nodes (seeded), remember the global model, and send each sampled node the
        model, the config and its own records."""
        if self.fraction_train == 0.0:
            return []
        chosen = self.sample(grid)
        self._check(len(chosen))
        self.adversary = self._adversary()
        layout = Layout.of(arrays)
        previous = layout.flatten(arrays, check_finite=False)
        workers = torch.tensor([w for w, _ in chosen], dtype=torch.int64)
        extra: Sequence[Mapping[str, Record]] = [{}] * len(chosen)
        if self.node_records is not None:
            extra = self.node_records(server_round, workers)
            if len(extra) != len(chosen):
                raise ValueError(f"node_records gave {len(extra)} entries for "
                                 f"{len(chosen)} nodes")
        config["server-round"] = server_round
        self._pending = _Round(server_round, previous, layout, {n: w for w, n in chosen})
        log.info("configure_train: sampled %d nodes (of %d)", len(chosen), len(self.worker_of))
        return [Message(content=RecordDict({self.arrayrecord_key: arrays,
                                            self.configrecord_key: config, **records}),
                        dst_node_id=node, message_type=MessageType.TRAIN)
                for (_, node), records in zip(chosen, extra, strict=True)]

    # ------------------------------------------------------------------ aggregate
    def _read(self, msg: Message, pending: _Round) -> tuple[Tensor, float]:
        """The reply's model as a flat vector and its example count; :class:`BadReply`."""
        if msg.has_error():
            raise BadReply("error", f"error reply: {msg.error.reason}")
        if not msg.has_content():
            raise BadReply("records", "reply without content")
        records = list(msg.content.array_records.values())
        if len(records) != 1:
            raise BadReply("records", f"expected one ArrayRecord, got {len(records)}")
        w = pending.layout.flatten(records[0])
        n = math.nan
        if self.weighted:
            counts = [r[self.weighted_by_key] for r in msg.content.metric_records.values()
                      if self.weighted_by_key in r]
            value = counts[0] if len(counts) == 1 else None
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value <= 0):
                raise BadReply("examples", f"no positive {self.weighted_by_key!r} metric to "
                                           "weight by")
            n = float(value)
        return w, n

    def _drop(self, server_round: int, node: int, kind: str, reason: str) -> None:
        self.dropped[kind] += 1
        self.drops.append((server_round, node, kind, reason))
        log.warning("round %d: dropped the reply of node %d: %s", server_round, node, reason)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check the replies, let the red team craft its nodes' models, and aggregate with
        the defense, pre-aggregators and rule: the next global model and the round's
        metrics. A round whose replies cannot be aggregated keeps the global model."""
        pending, self._pending = self._pending, None
        if pending is None or pending.server_round != server_round:
            raise RuntimeError(f"aggregate_train: round {server_round} was not configured by "
                               "this strategy's configure_train")
        rows: dict[int, Tensor] = {}
        counts: dict[int, float] = {}
        contents: list[RecordDict] = []
        answered: set[int] = set()
        for msg in replies:
            node = msg.metadata.src_node_id
            if node not in pending.expected:
                self._drop(server_round, node, "unexpected", "reply from a node not sampled "
                                                             "this round")
                continue
            if node in answered:
                self._drop(server_round, node, "duplicate", "second reply this round")
                continue
            answered.add(node)
            try:
                w, n = self._read(msg, pending)
            except BadReply as e:
                self._drop(server_round, node, e.kind, str(e))
                continue
            worker = pending.expected[node]
            rows[worker], counts[worker] = w, n
            contents.append(msg.content)
        for node in sorted(set(pending.expected) - answered):
            self._drop(server_round, node, "missing", "no reply")
        self.accepted += len(rows)
        metrics = self._client_metrics(contents)
        metrics["fedpoison-accepted"] = len(rows)
        metrics["fedpoison-dropped"] = len(pending.expected) - len(rows)
        if not rows:
            return self._skip(server_round, "no reply to aggregate", metrics)

        order = sorted(rows)
        workers = torch.tensor(order, dtype=torch.int64)
        W = torch.stack([rows[w] for w in order])
        previous = pending.previous
        if self.weighted:
            n = torch.tensor([counts[w] for w in order], dtype=torch.float64)
            scale = (n * len(order) / n.sum()).to(W.dtype)
            W = previous + scale[:, None] * (W - previous)
        assert self.adversary is not None
        poisoned = self.red_team is not None and self.red_team.poisons(server_round)
        crafted = int(self.adversary.is_compromised[workers].sum()) if poisoned else 0
        try:
            self.server.pipeline.check(len(order), self.f)
            if self.server.defense is not None:
                resolve_defense(self.server.defense.name, self.defense_options,
                                self.server.pipeline.rule.name, self.rule_options,
                                self.preaggregators, len(order), self.f)
            if crafted and self.red_team is not None:
                self.red_team.check(len(order))
        except ValueError as e:  # ConfigError is a ValueError
            return self._skip(server_round, f"cannot aggregate {len(order)} models: {e}",
                              metrics)
        before = {k: len(v) for k, v in self.notes.items()}
        w_next = attack_and_aggregate(self.server, self.adversary, W, workers, previous,
                                      server_round, self.notes, self.detection, self.timings)
        self.rounds += 1
        metrics["fedpoison-crafted"] = crafted
        settle_notes(self.notes)  # one transfer for this round's diagnostics
        for name, values in self.notes.items():
            if len(values) > before.get(name, 0):
                metrics[f"fedpoison-{name}"] = float(values[-1])
        return pending.layout.record(w_next), metrics

    def _skip(self, server_round: int, reason: str, metrics: MetricRecord
              ) -> tuple[None, MetricRecord]:
        self.skipped.append((server_round, reason))
        log.warning("round %d: the global model stays: %s", server_round, reason)
        return None, metrics

    def _client_metrics(self, contents: list[RecordDict]) -> MetricRecord:
        """The clients' metrics, aggregated by ``train_metrics_aggr_fn`` when every accepted
        reply carries consistent ones (else left out, with a log line)."""
        if not contents:
            return MetricRecord()
        try:
            validate_message_reply_consistency(contents, self.weighted_by_key, False)
            return self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        except (InconsistentMessageReplies, ValueError, TypeError, KeyError) as e:
            log.info("client metrics left out of the round's metrics: %s", e)
            return MetricRecord()

    # ------------------------------------------------------------------ results
    def diagnostics(self) -> dict[str, Any]:
        """What the simulator's ``RunResult.diagnostics`` holds (the components' notes,
        detection rates), plus the replies: accepted, dropped by kind, skipped rounds."""
        out: dict[str, Any] = summarize_notes(self.notes)
        if self.detection.iterations:
            out["detection"] = self.detection.summary()
        out["replies"] = {"rounds": self.rounds, "accepted": self.accepted,
                          "dropped": sum(self.dropped.values()),
                          **{f"dropped_{k}": v for k, v in sorted(self.dropped.items())},
                          "skipped_rounds": len(self.skipped)}
        return out

    def compromised_nodes(self) -> list[int]:
        """The node ids the red team controls (after the first round)."""
        if self.red_team is None or self.red_team.adversary is None:
            return []
        return self.red_team.compromised_nodes(self.worker_of)
