"""The Flower bridge (fedpoison.flower): equal to the simulator, robust to bad replies.

Most tests drive the real strategy, adversary and ClientApp code with Flower's own Message,
ArrayRecord and Grid types in one process (``fedpoison.flower.testing.InProcessGrid``); the
last one runs the example app on Flower's simulation engine (Ray). Without Flower installed
(the ``flower`` extra) they are skipped, except the check that the core never imports it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import fedpoison
from fedpoison import RunConfig, registry
from fedpoison.errors import ConfigError
from fedpoison.simulation import Setup, prepare, summarize_notes

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flower"
HAVE_FLWR = importlib.util.find_spec("flwr") is not None
needs_flwr = pytest.mark.skipif(not HAVE_FLWR, reason="needs Flower: pip install "
                                                      "'fedpoison[flower]'")
TOL = 1e-6  # float tolerance of the equivalence (k = 1 vs k = m batched products)


def _mnist() -> None:
    value = os.environ.get("FEDPOISON_DATA")
    if not value or not (Path(value) / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("needs FEDPOISON_DATA with MNIST (CI: ../shared/datasets)")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny per-node products: one thread is faster than two fighting (and deterministic)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def clean_registry() -> Iterator[list[tuple[str, str]]]:
    made: list[tuple[str, str]] = []
    yield made
    for kind, name in made:
        registry.REGISTRY.remove(kind, name)


# ------------------------------------------------------------------ the core stays free
def test_core_never_imports_flower() -> None:
    """Importing fedpoison and its CLI, loading every component and running a simulation
    never import flwr; the bridge does (so the check can fail)."""
    code = ("import sys, fedpoison, fedpoison.cli\n"
            "from fedpoison import RunConfig, registry\n"
            "registry.REGISTRY.ensure_loaded()\n"
            "fedpoison.run(RunConfig(dataset='breast-cancer', workers=10, compromised=2,\n"
            "              iterations=2, rule='krum', attack='krum'))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'flwr'))\n")
    if HAVE_FLWR:
        code += "import fedpoison.flower\nprint('flwr' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", *(["True"] if HAVE_FLWR else [])]


# --------------------------------------------------------------------------- harness
def _client(setup: Setup) -> Callable[[Any, Any], Any]:
    """A node of ``setup``: trains on the server's batches with fedpoison's SGD step."""
    from flwr.app import Message, MessageType, MetricRecord, RecordDict

    from fedpoison.flower import (
        answer_worker_query,
        from_record,
        node_worker_id,
        read_positions,
        to_record,
        train_on_positions,
    )

    def client(msg: Message, context: Any) -> Message:
        if msg.metadata.message_type == MessageType.QUERY:
            return answer_worker_query(msg, context)
        worker = node_worker_id(context.node_config)
        w = from_record(msg.content["arrays"])
        local = train_on_positions(setup.task, worker, w, read_positions(msg),
                                   setup.labels_clean)
        n = int(setup.task.partition.counts[worker])
        return Message(RecordDict({"arrays": to_record(local),
                                   "metrics": MetricRecord({"num-examples": n})}),
                       reply_to=msg)

    return client


def _flower(cfg: RunConfig, rounds: int, wrap: Callable[[int, Any], Any] | None = None,
            **kwargs: Any) -> tuple[torch.Tensor, Any, Any]:
    """``rounds`` rounds of ``cfg`` through Flower's strategy loop, in process: the final
    model, the strategy and the grid. ``wrap(partition, client)`` may replace a node."""
    from fedpoison.flower import (
        BatchSchedule,
        FedpoisonStrategy,
        discover_workers,
        from_record,
        to_record,
    )
    from fedpoison.flower.testing import InProcessGrid

    setup = prepare(cfg)
    c = setup.config
    assert c.batch_size is not None
    clients = [_client(setup)] * c.workers
    if wrap is not None:
        clients = [wrap(i, cl) for i, cl in enumerate(clients)]
    grid = InProcessGrid(clients, seed=7)
    workers = discover_workers(grid, min_nodes=c.workers)
    strategy = FedpoisonStrategy.from_config(
        cfg, workers=workers, node_records=BatchSchedule(setup.task.partition, c.batch_size,
                                                         c.local_rounds, seed=c.seed),
        **kwargs)
    initial = to_record(setup.w0)
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, timeout=60)
    # Flower's result holds no arrays when no round produced a model.
    return from_record(result.arrays if len(result.arrays) else initial), strategy, grid


def _simulator(cfg: RunConfig, rounds: int) -> tuple[torch.Tensor, dict, Setup]:
    setup = prepare(cfg)
    w, notes = setup.w0, {}
    for t in range(1, rounds + 1):
        w = setup.step(w, t, notes)
    return w, notes, setup


def _same_diagnostics(flower: dict, notes: dict) -> None:
    sim = summarize_notes(notes)
    assert set(flower) - {"replies", "detection"} == set(sim)
    for name, stats in sim.items():
        for key, value in stats.items():
            assert flower[name][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, key)


# ------------------------------------------------------------------------ equivalence
@needs_flwr
@pytest.mark.parametrize("rule,attack", [("krum", "krum"), ("mean", "none")])
def test_flower_equals_the_simulator_on_mnist(rule: str, attack: str, one_thread: None
                                              ) -> None:
    """The paper's setting (m = 20, c = 4, MNIST LR, non-IID 0.5): Krum under the full-
    knowledge Krum attack, and the mean without attack, for a few rounds."""
    _mnist()
    cfg = RunConfig(dataset="mnist", workers=20, compromised=4, rule=rule, attack=attack,
                    iterations=4, seed=3)
    w_fl, strategy, grid = _flower(cfg, 4)
    w_sim, notes, setup = _simulator(cfg, 4)
    assert float((w_fl - w_sim).abs().max()) <= TOL
    assert float((w_sim - setup.w0).abs().max()) > 1e-3  # it did move
    _same_diagnostics(strategy.diagnostics(), notes)
    if attack != "none":
        assert strategy.diagnostics()["selected_crafted"]["mean"] == 1.0
        nodes = strategy.compromised_nodes()
        assert sorted(grid.contexts[n].node_config["partition-id"] for n in nodes) == \
            setup.adversary.compromised.tolist()
    assert strategy.diagnostics()["replies"] == {"rounds": 4, "accepted": 80, "dropped": 0,
                                                 "skipped_rounds": 0}


@needs_flwr
def test_sampling_partial_knowledge_local_rounds_and_state(clean_registry: list,
                                                           one_thread: None) -> None:
    """Seeded sampling (k < m), two local steps, the partial-knowledge trimmed-mean attack,
    a pre-aggregator, and a rule that keeps state across rounds: still the simulator's."""

    @fedpoison.register_rule("test-momentum", reference="test", needs=("previous", "state"),
                             stateful=True)
    def momentum(W: torch.Tensor, f: int, *, ctx: Any) -> torch.Tensor:
        rows.append(ctx.workers.tolist())  # the worker ids of W's rows
        step = W.median(dim=0).values - ctx.previous
        ctx.state["m"] = 0.5 * ctx.state.get("m", torch.zeros_like(step)) + step
        ctx.state["calls"] = ctx.state.get("calls", 0) + 1
        return ctx.previous + ctx.state["m"]

    @fedpoison.register_preaggregator("test-clip", reference="test",
                                      options=[fedpoison.Option("tau", 1.0, "bound")])
    def clip(W: torch.Tensor, f: int, *, tau: float) -> torch.Tensor:
        return W.clamp(-tau, tau)

    rows: list[list[int]] = []
    clean_registry += [("rule", "test-momentum"), ("preaggregator", "test-clip")]
    cfg = RunConfig(dataset="breast-cancer", workers=20, compromised=4, sample=10,
                    local_rounds=2, rule="test-momentum", attack="trimmed-mean",
                    knowledge="partial", attack_options={"target_rule": "median"},
                    preaggregators=["test-clip:tau=0.05"], iterations=5, seed=1)
    w_fl, strategy, _ = _flower(cfg, 5)
    flower_rows, rows[:] = rows[:], []
    w_sim, notes, _ = _simulator(cfg, 5)
    assert float((w_fl - w_sim).abs().max()) <= TOL
    assert strategy.server.states[-1]["calls"] == 5  # one state, kept across rounds
    # The same sampled workers, rows in worker order (replies arrive shuffled).
    assert flower_rows == rows and all(r == sorted(r) and len(r) == 10 for r in rows)
    _same_diagnostics(strategy.diagnostics(), notes)


# ----------------------------------------------------------------------- bad replies
def _tamper(kind: str) -> Callable[[Any, Any], Any]:
    """A client wrapper that spoils its reply in one way."""
    from flwr.app import Array, ArrayRecord, Message, MessageType, RecordDict

    def wrap(client: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def bad(msg: Message, context: Any) -> Message | None:
            reply = client(msg, context)
            if msg.metadata.message_type == MessageType.QUERY:
                return reply
            if kind == "missing":
                return None
            if kind == "error":
                raise RuntimeError("the node crashed")
            w = reply.content["arrays"]["w"].numpy()
            spoilt = {"shape": w[:-1], "dtype": w.astype(np.float64),
                      "nan": np.where(np.arange(w.size) == 3, np.nan, w).astype(np.float32),
                      "inf": np.where(np.arange(w.size) == 5, np.inf, w).astype(np.float32),
                      "keys": None, "two": None, "lie": None}[kind]
            if kind == "keys":
                arrays = ArrayRecord({"weights": Array(w)})
            elif kind == "lie":  # metadata of the expected array, bytes of another
                other = Array(np.zeros(3, dtype=np.float32))
                arrays = ArrayRecord({"w": Array(dtype="float32", shape=tuple(w.shape),
                                                 stype=other.stype, data=other.data)})
            else:
                arrays = ArrayRecord({"w": Array(spoilt if spoilt is not None else w)})
            content = RecordDict({"arrays": arrays, "metrics": reply.content["metrics"]})
            if kind == "two":
                content["more"] = ArrayRecord({"w": Array(w)})
            return Message(content, reply_to=msg)
        return bad
    return wrap


KINDS = {"shape": "shape", "dtype": "dtype", "nan": "non-finite", "inf": "non-finite",
         "keys": "keys", "two": "records", "missing": "missing", "error": "error",
         "lie": "decode"}


@needs_flwr
def test_bad_replies_are_dropped_logged_and_counted(one_thread: None) -> None:
    """One node per kind of bad reply; the round goes on with the others, and the model is
    the rule over exactly the good replies."""
    kinds = list(KINDS)
    cfg = RunConfig(dataset="breast-cancer", workers=12, compromised=2, rule="mean",
                    iterations=2, seed=0)
    seen: dict[int, torch.Tensor] = {}

    def wrap(partition: int, client: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        if partition < len(kinds):
            return _tamper(kinds[partition])(client)
        from fedpoison.flower import from_record

        def good(msg: Any, context: Any) -> Any:
            reply = client(msg, context)
            if "arrays" in reply.content.array_records:
                seen[partition] = from_record(reply.content["arrays"])
            return reply
        return good

    handler_records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = handler_records.append  # type: ignore[method-assign]
    logging.getLogger("flwr.fedpoison").addHandler(handler)
    try:
        w_fl, strategy, _ = _flower(cfg, 1, wrap=wrap)
    finally:
        logging.getLogger("flwr.fedpoison").removeHandler(handler)
    expected: dict[str, int] = {}
    for kind in kinds:
        expected[KINDS[kind]] = expected.get(KINDS[kind], 0) + 1
    replies = strategy.diagnostics()["replies"]
    assert replies["accepted"] == cfg.workers - len(kinds)
    assert replies["dropped"] == len(kinds)
    assert {k.removeprefix("dropped_"): v for k, v in replies.items()
            if k.startswith("dropped_")} == expected
    assert strategy.rounds == 1 and not strategy.skipped
    good = torch.stack([seen[p] for p in sorted(seen)])
    assert torch.equal(w_fl, good.mean(0))
    logged = [r.getMessage() for r in handler_records if r.levelno == logging.WARNING]
    assert len(logged) == len(kinds)
    assert any("shape (" in m for m in logged) and any("NaN or infinite" in m for m in logged)
    assert any("no reply" in m for m in logged) and any("the node crashed" in m for m in logged)


@needs_flwr
def test_duplicate_and_unexpected_replies_are_dropped() -> None:
    """aggregate_train alone, with hand-made replies: a second reply from a node and a
    reply from a node that was not sampled are dropped; the round is the mean of the rest."""
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    from fedpoison.flower import FedpoisonStrategy, from_record, to_record
    from fedpoison.flower.testing import InProcessGrid

    grid = InProcessGrid([lambda m, c: None] * 4, seed=5)
    strategy = FedpoisonStrategy(f=0, rule="mean", min_available_nodes=4, min_train_nodes=4)
    messages = list(strategy.configure_train(1, to_record(torch.zeros(3)), ConfigRecord(),
                                             grid))
    models = {m.metadata.dst_node_id: torch.full((3,), float(i)) for i, m in
              enumerate(messages)}
    replies = [Message(RecordDict({"arrays": to_record(models[m.metadata.dst_node_id])}),
                       reply_to=m) for m in messages]
    stranger = Message(RecordDict({"arrays": to_record(torch.zeros(3))}), dst_node_id=12345,
                       message_type=MessageType.TRAIN)
    replies += [Message(RecordDict({"arrays": to_record(torch.full((3,), 9.0))}),
                        reply_to=messages[0]),
                Message(RecordDict({"arrays": to_record(torch.full((3,), 9.0))}),
                        reply_to=stranger)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    assert torch.equal(from_record(arrays), torch.full((3,), 1.5))  # mean of 0, 1, 2, 3
    assert dict(strategy.dropped) == {"duplicate": 1, "unexpected": 1}
    assert metrics["fedpoison-accepted"] == 4
    with pytest.raises(RuntimeError, match="round 2 was not configured"):
        strategy.aggregate_train(2, replies)


@needs_flwr
def test_a_round_without_good_replies_keeps_the_model(one_thread: None) -> None:
    """No reply at all, or too few for the rule's precondition: the global model stays, the
    round is counted as skipped, and the run goes on."""
    cfg = RunConfig(dataset="breast-cancer", workers=12, compromised=2, rule="krum",
                    iterations=2, seed=0)
    setup = prepare(cfg)
    w_fl, strategy, _ = _flower(cfg, 2, wrap=lambda i, c: _tamper("missing")(c))
    assert torch.equal(w_fl, setup.w0)
    assert [r for r, _ in strategy.skipped] == [1, 2]
    # Krum needs m > 2f + 2 = 6: with 6 nodes silent only 6 models are left.
    w_fl, strategy, _ = _flower(cfg, 1, wrap=lambda i, c: _tamper("missing")(c) if i < 6 else c)
    assert torch.equal(w_fl, setup.w0)
    assert "krum" in strategy.skipped[0][1] and strategy.dropped["missing"] == 6


# --------------------------------------------------------------------- weighting, state
@needs_flwr
def test_no_example_weighting_unless_asked(one_thread: None) -> None:
    """By default the mean is the plain mean of the replies; ``weighted=True`` gives
    FedAvg's average weighted by the reported example counts."""
    cfg = RunConfig(dataset="breast-cancer", workers=10, compromised=2, rule="mean",
                    iterations=1, seed=2)
    w_plain, _, _ = _flower(cfg, 1)
    w_sim, _, setup = _simulator(cfg, 1)
    assert float((w_plain - w_sim).abs().max()) <= TOL
    w_weighted, _, _ = _flower(cfg, 1, weighted=True)
    counts = setup.task.partition.counts.double()
    # The local models of the round, from the simulator's own first step.
    fresh = prepare(cfg)
    W = fresh.task.local_train(fresh.w0, torch.arange(10), fresh.labels_clean, 1,
                               fresh.train_generator)
    expected = (counts[:, None] * W.double()).sum(0) / counts.sum()
    assert float((w_weighted.double() - expected).abs().max()) <= TOL
    assert float((w_weighted - w_plain).abs().max()) > 1e-4  # the split is uneven


# --------------------------------------------------------------------------- red team
@needs_flwr
@pytest.mark.parametrize("knowledge", ["full", "partial"])
def test_red_team_sees_what_its_knowledge_allows(knowledge: str, clean_registry: list,
                                                 one_thread: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Given node ids, the red team replaces exactly their replies; under partial knowledge
    the attack's context holds no benign model at all."""
    from fedpoison.flower import RedTeam
    from fedpoison.flower import strategy as strategy_module
    from fedpoison.flower.testing import InProcessGrid

    seen: list[tuple[int, int | None]] = []

    @fedpoison.register_attack("test-spy", reference="test", knowledge=("full", "partial"))
    def spy(ctx: Any) -> torch.Tensor:
        seen.append((ctx.c, None if ctx.benign is None else ctx.benign.shape[0]))
        return torch.full_like(ctx.compromised, 7.0)

    clean_registry.append(("attack", "test-spy"))
    aggregated: list[torch.Tensor] = []
    original = strategy_module.attack_and_aggregate

    def record(server: Any, adversary: Any, W: torch.Tensor, *a: Any, **k: Any
               ) -> torch.Tensor:
        out = original(server, adversary, W, *a, **k)
        aggregated.append(W.clone())  # after the attack replaced its rows in place
        return out

    monkeypatch.setattr(strategy_module, "attack_and_aggregate", record)
    probe = InProcessGrid([lambda m, c: None] * 10, seed=7)  # the node ids _flower uses
    nodes = [probe.node_of(8), probe.node_of(3)]
    cfg = RunConfig(dataset="breast-cancer", workers=10, compromised=2, rule="mean",
                    iterations=1, seed=0)
    _, strategy, _ = _flower(cfg, 1, red_team=RedTeam("test-spy", compromised=nodes,
                                                      knowledge=knowledge))
    assert seen == [(2, 8 if knowledge == "full" else None)]
    crafted = (aggregated[0] == 7.0).all(1)
    assert crafted.nonzero().reshape(-1).tolist() == [3, 8]
    assert strategy.compromised_nodes() == sorted(nodes)
    assert strategy.diagnostics()["replies"]["accepted"] == 10


@needs_flwr
def test_bad_options_are_one_line_errors() -> None:
    from fedpoison.flower import FedpoisonStrategy, RedTeam

    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: FedpoisonStrategy(f=1, rule="no-such-rule"), "no-such-rule"),
        (lambda: FedpoisonStrategy(f=1, rule="trimmed-mean", rule_options={"bta": 1}),
         "has no option 'bta'"),
        (lambda: FedpoisonStrategy(f=-1), "f:"),
        (lambda: FedpoisonStrategy(f=1, defense="err"), "server_data"),
        (lambda: FedpoisonStrategy(f=1, preaggregators=[3]), "preaggregators"),
        (lambda: RedTeam("krum", compromised=[1], count=1), "exactly one"),
        (lambda: RedTeam("krum", count=0), "count"),
        (lambda: RedTeam("label-flip", count=2), "poisons training data"),
        (lambda: RedTeam("krum", count=2, poison_fraction=0.5), "rounds"),
        (lambda: FedpoisonStrategy(f=1, red_team=RedTeam("krum", {"epsilon": -1}, count=2)),
         "epsilon"),
        (lambda: FedpoisonStrategy(f=1, red_team=RedTeam("krum", count=2),
                                   rule="mean").red_team.check(3), "krum"),  # m > 2f + 2
    ]
    for make, needle in cases:
        with pytest.raises(ConfigError) as e:
            make()
            pytest.fail(f"no error for {needle!r}")
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


@needs_flwr
def test_rule_precondition_is_checked_when_nodes_are_sampled(one_thread: None) -> None:
    cfg = RunConfig(dataset="breast-cancer", workers=12, compromised=2, rule="mean",
                    iterations=1, seed=0)
    with pytest.raises(ConfigError, match="krum"):
        _flower(cfg, 1, rule="krum", f=5)  # Krum needs m > 2f + 2 = 12


# ------------------------------------------------------------------------ the example
@needs_flwr
def test_example_app_in_process_both_batch_sources(one_thread: None) -> None:
    """The example's own ServerApp and ClientApp (Flower's routing, settings, output) in
    one process: with the server's batches it is the simulator's run; with batches the
    nodes draw themselves it runs, and differs."""
    _mnist()
    from flwr.app import Context, RecordDict

    from fedpoison.flower.testing import InProcessGrid

    sys.path.insert(0, str(EXAMPLE))
    try:
        from fedpoison_app.client_app import make_client_app
        from fedpoison_app.server_app import make_server_app
        from fedpoison_app.task import run_config, settings
    finally:
        sys.path.remove(str(EXAMPLE))
    finals = {}
    for source in ("server", "client"):
        out = Path(os.environ.get("PYTEST_TMP", "/tmp")) / f"fp-flower-{os.getpid()}-{source}"
        ov = {"num-server-rounds": 2, "eval-every": 1, "batch-source": source,
              "output": str(out)}
        grid = InProcessGrid([make_client_app(ov)] * 20, seed=11)
        make_server_app(ov)(grid, Context(run_id=1, node_id=0, node_config={},
                                          state=RecordDict(), run_config={}))
        finals[source] = torch.from_numpy(np.load(out / "final.npy"))
        result = json.loads((out / "result.json").read_text())
        assert [t for t, _ in result["curve"]] == [1, 2]
    w_sim, _, _ = _simulator(run_config(settings({}, {"num-server-rounds": 2})), 2)
    assert float((finals["server"] - w_sim).abs().max()) <= TOL
    assert float((finals["client"] - w_sim).abs().max()) > 1e-4


@needs_flwr
@pytest.mark.slow
def test_example_app_on_flowers_simulation_engine(tmp_path: Path) -> None:
    """The example, started with Flower's simulation engine (Ray, 20 SuperNodes), ends
    where the simulator ends after the same rounds."""
    _mnist()
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Flower's simulation engine needs Ray")
    rounds = 3
    tic = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py"), f"num-server-rounds={rounds}",
         f"output={tmp_path}"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0",
             "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(EXAMPLE)])})
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert (tmp_path / "final.npy").is_file(), (out.stdout + out.stderr)[-4000:]
    sys.path.insert(0, str(EXAMPLE))
    try:
        from fedpoison_app.task import run_config, settings
    finally:
        sys.path.remove(str(EXAMPLE))
    w_sim, notes, _ = _simulator(run_config(settings({}, {"num-server-rounds": rounds})),
                                 rounds)
    w_fl = torch.from_numpy(np.load(tmp_path / "final.npy"))
    assert float((w_fl - w_sim).abs().max()) <= TOL
    result = json.loads((tmp_path / "result.json").read_text())
    _same_diagnostics(result["diagnostics"], notes)
    print(f"Flower simulation engine: {rounds} rounds in {time.perf_counter() - tic:.1f} s "
          f"wall, {result['seconds']:.2f} s in the strategy loop")
