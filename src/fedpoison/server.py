"""The server of one run: defense, then pre-aggregators, then the aggregation rule.

Each iteration the server receives the local models ``W`` [k, d] (after any attack); an
optional defense drops suspected rows (Section 5); the pre-aggregators transform what is
left (bucketing, clipping, ...); the rule aggregates it into the next global model. Rules
that ask for it get a :class:`ServerContext`: the previous global model, the iteration,
their own state carried across iterations, the server's held-out data and a seeded
generator. The paper's rules stay pure ``(W, f)`` kernels.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fedpoison import registry
from fedpoison.notes import Notes, note_value
from fedpoison.registry import Bound, PreaggregatorSpec, RuleSpec


@dataclass
class ServerData:
    """Examples the server holds (drawn from the test set, as the paper's defenses do).

    ``evaluate(models [n, d]) -> (error rates [n], cross-entropies [n])`` in one batched pass.
    ``train(w, rounds, generator) -> w'``: the model after ``rounds`` local SGD steps from
    ``w`` on mini-batches of these examples (the task's learning rate and batch size), as a
    worker trains: what FLTrust's server does with its root dataset.
    """

    x: Tensor
    y: Tensor
    evaluate: Callable[[Tensor], tuple[Tensor, Tensor]]
    train: Callable[[Tensor, int, torch.Generator], Tensor] | None = None


@dataclass
class ServerContext:
    """What a rule, pre-aggregator or defense may ask the server for in one iteration."""

    iteration: int
    previous: Tensor  # the global model the workers started from (w_Re)
    state: dict[str, Any]  # this component's own state, kept across iterations
    generator: torch.Generator
    server_data: ServerData | None = None
    notes: Notes | None = None
    workers: Tensor | None = None  # worker ids of the rows the server received (int64)
    rows: int = 0  # rows of the W this component is given
    removed: Tensor | None = None  # set by remove()

    def note(self, name: str, value: float | Tensor) -> None:
        if self.notes is not None:
            self.notes.setdefault(name, []).append(note_value(value))

    def remove(self, rows: Tensor) -> None:
        """Record which rows of its ``W`` this component removed or gave no weight (a bool
        mask or indices). The simulation, which alone knows which workers are compromised,
        turns it into detection rates (true and false positives) in the run's diagnostics.
        A defense's dropped rows are recorded without this call."""
        mask = torch.zeros(self.rows, dtype=torch.bool)
        rows = rows.detach().cpu()
        if rows.dtype == torch.bool:
            mask |= rows.reshape(-1)
        else:
            mask[rows.to(torch.int64)] = True
        self.removed = mask


def takes_context(fn: Any) -> bool:
    """Whether ``fn`` has a ``ctx`` parameter (a rule without needs may still take an optional
    context, e.g. to report the rows it removed with ``ctx.remove``)."""
    try:
        return "ctx" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class BoundRule(Bound):
    """A registered rule with its options bound: ``rule(W, f, ctx=None) -> w``.

    A rule that declares ``needs`` must get a context; a rule whose function merely has a
    ``ctx`` parameter gets the context when there is one (``None`` otherwise)."""

    spec: RuleSpec

    def __init__(self, spec: RuleSpec, options: Mapping[str, Any]) -> None:
        super().__init__(spec, options)
        self._optional_ctx = not spec.needs and takes_context(spec.impl)

    @property
    def selects_row(self) -> bool:
        return self.spec.selects_row

    def check(self, m: int, f: int) -> None:
        """The rule's precondition on ``m`` models with ``f`` assumed Byzantine."""
        if self.spec.check is not None:
            self.spec.check(m, f, **self.options)

    def __call__(self, W: Tensor, f: int, ctx: ServerContext | None = None) -> Tensor:
        if self.spec.needs:
            if ctx is None:
                raise ValueError(f"rule {self.name} needs the server context "
                                 f"({', '.join(sorted(self.spec.needs))})")
            return self.spec.impl(W, f, ctx=ctx, **self.options)
        if self._optional_ctx:
            return self.spec.impl(W, f, ctx=ctx, **self.options)
        return self.spec.impl(W, f, **self.options)

    def with_and_without(self, W: Tensor, f: int, ctx: ServerContext | None = None
                         ) -> tuple[Tensor, Tensor]:
        """``(A, B)``: ``A = rule(W)`` and ``B[i] = rule(W without row i)`` (defenses).

        The rule's own batched leave-one-out when it has one, else ``k`` rule calls (a
        generic fallback: correct for any rule, slow for large ``k``)."""
        fast = self.spec.with_and_without
        if fast is not None and not self.spec.needs:
            return fast(W, f, **self.options)
        return loop_with_and_without(lambda X, keep: self(X, f, without(ctx, keep)), W,
                                     pass_keep=True)


def without(ctx: ServerContext | None, keep: Tensor | None) -> ServerContext | None:
    """The context of a leave-one-out call on the rows ``keep`` of the server's ``W``: the
    worker ids of those rows (a rule that keeps per-worker state, e.g. FoolsGold's
    histories, must see whose rows it got), ``rows`` still the server's count (how such a
    rule tells a leave-one-out call from the iteration's own), the same state and notes."""
    if ctx is None or keep is None or ctx.workers is None or ctx.workers.numel() != keep.numel():
        return ctx
    return dataclasses.replace(ctx, workers=ctx.workers[keep.to(ctx.workers.device)],
                               removed=None)


def loop_with_and_without(aggregate: Callable[..., Tensor], W: Tensor, *,
                          pass_keep: bool = False) -> tuple[Tensor, Tensor]:
    """The reference leave-one-out: one aggregation of all rows and one without each row.

    With ``pass_keep``, ``aggregate(X, keep)`` is also given the bool mask of ``W``'s rows
    in ``X`` (``None`` for all of them)."""
    k = W.shape[0]
    keep = torch.ones(k, dtype=torch.bool, device=W.device)
    out = []
    for i in range(k):
        keep[i] = False
        out.append(aggregate(W[keep], keep.clone()) if pass_keep else aggregate(W[keep]))
        keep[i] = True
    return (aggregate(W, None) if pass_keep else aggregate(W)), torch.stack(out)


@dataclass(frozen=True)
class LeaveOneOut:
    """A pre-aggregator's output on all ``m`` rows and without each one.

    ``full`` [m', d] is its output on all rows. Without row ``i`` the output is ``full`` with
    row ``row[i]`` replaced by ``replacement[i]``, or removed where ``removed[i]`` (e.g. the
    bucket that held only row ``i``)."""

    full: Tensor
    row: Tensor
    replacement: Tensor
    removed: Tensor

    def without(self, i: int) -> Tensor:
        """The output without input row ``i``."""
        r = int(self.row[i])
        if bool(self.removed[i]):
            return torch.cat([self.full[:r], self.full[r + 1:]])
        out = self.full.clone()
        out[r] = self.replacement[i]
        return out


class BoundPreaggregator(Bound):
    """A registered pre-aggregator with its options bound: ``preagg(W, f, ctx) -> W'``."""

    spec: PreaggregatorSpec

    def output(self, m: int, f: int) -> tuple[int, int]:
        if self.spec.output is None:
            return m, f
        return self.spec.output(m, f, **self.options)

    def _context(self, ctx: ServerContext | None) -> dict[str, Any]:
        if not self.spec.needs:
            return {}
        if ctx is None:
            raise ValueError(f"pre-aggregator {self.name} needs the server context")
        return {"ctx": ctx}

    def __call__(self, W: Tensor, f: int, ctx: ServerContext | None = None) -> Tensor:
        return self.spec.impl(W, f, **self._context(ctx), **self.options)

    def leave_one_out(self, W: Tensor, f: int, ctx: ServerContext | None = None
                      ) -> LeaveOneOut | None:
        """Its :class:`LeaveOneOut` on ``W``, or ``None`` where it has no such hook (or its
        options ask for independent calls)."""
        if self.spec.leave_one_out is None:
            return None
        return self.spec.leave_one_out(W, f, **self._context(ctx), **self.options)


class Pipeline:
    """Pre-aggregators followed by a rule, usable wherever a rule is (defenses, attacks).

    With no pre-aggregators it is the rule itself (and keeps its batched leave-one-out).
    """

    def __init__(self, rule: BoundRule, preaggs: Sequence[BoundPreaggregator] = ()) -> None:
        self.rule = rule
        self.preaggs = list(preaggs)

    @property
    def name(self) -> str:
        return "+".join([*(p.name for p in self.preaggs), self.rule.name])

    @property
    def needs(self) -> frozenset[str]:
        out = set(self.rule.spec.needs)
        for p in self.preaggs:
            out |= p.spec.needs
        return frozenset(out)

    def check(self, m: int, f: int) -> None:
        for p in self.preaggs:
            m, f = p.output(m, f)
        self.rule.check(m, f)

    def __call__(self, W: Tensor, f: int, ctx: ServerContext | None = None,
                 contexts: Sequence[ServerContext] | None = None) -> Tensor:
        """Aggregate ``W``; ``contexts`` gives each pre-aggregator its own context (state),
        the last one (or ``ctx``) is the rule's."""
        for i, p in enumerate(self.preaggs):
            f_out = p.output(W.shape[0], f)[1]
            W = p(W, f, contexts[i] if contexts is not None else ctx)
            f = f_out
        rule_ctx = contexts[-1] if contexts is not None else ctx
        return self.rule(W, f, rule_ctx)

    def with_and_without(self, W: Tensor, f: int, ctx: ServerContext | None = None
                         ) -> tuple[Tensor, Tensor]:
        """``(A, B)`` as :meth:`BoundRule.with_and_without`, through the pre-aggregators.

        A single pre-aggregator with a leave-one-out hook (bucketing) runs once: the rule
        then aggregates its output and, for each row ``i``, that output without row ``i``
        (k rule calls). Otherwise the whole pipeline is called k + 1 times."""
        if not self.preaggs:
            return self.rule.with_and_without(W, f, ctx)
        if len(self.preaggs) == 1:
            p = self.preaggs[0]
            loo = p.leave_one_out(W, f, ctx)
            if loo is not None:
                return self._rule_with_and_without(loo, W.shape[0], f, p.output, ctx)
        return loop_with_and_without(lambda X, keep: self(X, f, without(ctx, keep)), W,
                                     pass_keep=True)

    def _rule_with_and_without(self, loo: LeaveOneOut, k: int, f: int,
                               output: Callable[[int, int], tuple[int, int]],
                               ctx: ServerContext | None) -> tuple[Tensor, Tensor]:
        """The rule on a pre-aggregator's :class:`LeaveOneOut`: its batched
        ``with_rows_replaced`` for the rows that change, one rule call per left-out row
        otherwise; the leave-one-out calls come before the call on all rows, as in
        :func:`loop_with_and_without` (a stateful rule sees the same order)."""
        f_all, f_less = output(k, f)[1], output(k - 1, f)[1]
        out: Tensor | None = None
        spec = self.rule.spec
        todo = torch.arange(k)
        if spec.with_rows_replaced is not None and not spec.needs:
            changed = (~loo.removed).cpu()
            idx = todo[changed]
            if idx.numel():
                B = spec.with_rows_replaced(
                    loo.full, loo.row[idx.to(loo.row.device)],
                    loo.replacement[idx.to(loo.replacement.device)],
                    min(f_less, loo.full.shape[0]), **self.rule.options)
                out = B.new_empty((k, *B.shape[1:]))
                out[idx.to(B.device)] = B
            todo = todo[~changed]
        keep = torch.ones(k, dtype=torch.bool, device=loo.full.device)
        for i in todo.tolist():  # rows without a batched path: one rule call each
            keep[i] = False
            X = loo.without(i)
            b = self.rule(X, min(f_less, X.shape[0]), without(ctx, keep))
            keep[i] = True
            if out is None:
                out = b.new_empty((k, *b.shape))
            out[i] = b
        A = self.rule(loo.full, f_all, ctx)
        assert out is not None
        return A, out


def bind_rule(name: str, options: Mapping[str, Any] | None = None) -> BoundRule:
    """The registered rule ``name`` with its options (checked; defaults filled in)."""
    spec = registry.get("rule", name)
    return BoundRule(spec, spec.resolve_options(options))


def bind_pipeline(rule: str, rule_options: Mapping[str, Any],
                  preaggs: Sequence[tuple[str, Mapping[str, Any]]] = ()) -> Pipeline:
    bound = [BoundPreaggregator(s, s.resolve_options(o))
             for s, o in ((registry.get("preaggregator", n), o) for n, o in preaggs)]
    return Pipeline(bind_rule(rule, rule_options), bound)


@dataclass
class Server:
    """Defense → pre-aggregators → rule, with each component's state across iterations."""

    pipeline: Pipeline
    f: int
    generator: torch.Generator
    defense: Any = None  # a BoundDefense or None
    server_data: ServerData | None = None
    states: list[dict[str, Any]] = field(default_factory=list)
    defense_state: dict[str, Any] = field(default_factory=dict)
    #: This iteration's rows (of the received W) that the defense dropped or the rule
    #: reported removing (``ServerContext.remove``); ``None`` when nothing reported.
    removed: Tensor | None = None
    _kept: Tensor | None = None

    def __post_init__(self) -> None:
        self.states = [{} for _ in range(len(self.pipeline.preaggs) + 1)]

    def contexts(self, t: int, previous: Tensor, notes: Notes | None, rows: int = 0,
                 workers: Tensor | None = None) -> list[ServerContext]:
        return [ServerContext(t, previous, s, self.generator, self.server_data, notes, workers,
                              rows) for s in self.states]

    def defend(self, W: Tensor, previous: Tensor, t: int, notes: Notes | None = None,
               crafted: Tensor | None = None, workers: Tensor | None = None
               ) -> tuple[Tensor, Tensor | None]:
        """The rows the defense keeps, and the crafted-row mask among them (or ``None``)."""
        self.removed, self._kept = None, None
        if self.defense is None:
            return W, crafted
        ctx = ServerContext(t, previous, self.defense_state, self.generator, self.server_data,
                            notes, workers, W.shape[0])
        drop = self.defense(W, self.f, self.pipeline, ctx)
        keep = torch.ones(W.shape[0], dtype=torch.bool, device=W.device)
        keep[drop] = False
        self.removed, self._kept = ~keep.cpu(), torch.nonzero(keep.cpu()).reshape(-1)
        return W[keep], None if crafted is None else crafted[keep]

    def aggregate(self, W: Tensor, previous: Tensor, t: int, notes: Notes | None = None,
                  crafted: Tensor | None = None, workers: Tensor | None = None) -> Tensor:
        """The next global model from the models ``W`` the defense kept (``workers``: their
        ids, for rules that keep per-worker history)."""
        if self._kept is not None and workers is not None:
            workers = workers[self._kept]
        contexts = self.contexts(t, previous, notes, W.shape[0], workers)
        w = self.pipeline(W, self.f, contexts=contexts)
        reported = contexts[-1].removed
        if reported is not None and not self.pipeline.preaggs:
            if self._kept is None:
                self.removed = reported
            else:
                assert self.removed is not None
                self.removed = self.removed.clone()
                self.removed[self._kept[reported]] = True
        if (crafted is not None and notes is not None and self.pipeline.rule.selects_row
                and not self.pipeline.preaggs):
            # Did a selecting rule (Krum) pick one of the crafted models?
            notes.setdefault("selected_crafted", []).append(
                note_value((W[crafted] == w).all(1).any()))
        return w

    def __call__(self, W: Tensor, previous: Tensor, t: int, notes: Notes | None = None,
                 crafted: Tensor | None = None, workers: Tensor | None = None) -> Tensor:
        """Defense, then pre-aggregators and rule: the next global model."""
        W, crafted = self.defend(W, previous, t, notes, crafted, workers)
        return self.aggregate(W, previous, t, notes, crafted, workers)
