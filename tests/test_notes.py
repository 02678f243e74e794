"""Diagnostics recorded as device tensors are read back once, with the values a float()
per iteration gave (``fedpoison.notes``)."""

from __future__ import annotations

import math

import torch

from fedpoison.config import RunConfig
from fedpoison.notes import note_value, settle_notes
from fedpoison.simulation import prepare, summarize_notes


def test_settle_turns_every_tensor_into_the_float_it_holds() -> None:
    third = torch.tensor(1.0) / torch.tensor(3.0)  # float32: not the float64 1/3
    notes = {"a": [note_value(third), 2.5, note_value(torch.tensor(True))],
             "b": [note_value(torch.tensor(7)), note_value(torch.tensor(0.0) / 0.0)],
             "c": [1.0]}
    assert isinstance(notes["a"][0], torch.Tensor)
    settle_notes(notes)
    assert notes["a"] == [float(third), 2.5, 1.0] and notes["a"][0] != 1 / 3
    assert notes["b"][0] == 7.0 and math.isnan(notes["b"][1])
    assert notes["c"] == [1.0]
    assert all(type(v) is float for vs in notes.values() for v in vs)


def test_summary_reads_tensors_and_floats_alike() -> None:
    lazy = {"x": [note_value(torch.tensor(v)) for v in (0.5, 0.25, float("nan"))]}
    eager = {"x": [0.5, 0.25, math.nan]}
    assert summarize_notes(lazy) == summarize_notes(eager)
    assert summarize_notes(eager)["x"] == {"n": 3, "mean": 0.375, "median": 0.375,
                                           "min": 0.25, "max": 0.5}


def test_against_mean_direction_is_the_share_of_moved_coordinates() -> None:
    """The per-iteration diagnostic (now formed without a host test) against a plain
    recomputation from the iteration's local models: the share of coordinates that moved,
    on average, one way and went the other way in the new global model; NaN when none
    moved."""
    setup = prepare(RunConfig(dataset="mnist", model="lr", workers=10, compromised=2,
                              iterations=2, rule="median"))
    notes: dict[str, list[object]] = {}
    seen: list[torch.Tensor] = []
    setup.server.pipeline = _spy(setup.server.pipeline, seen)
    w0 = setup.w0.clone()
    w1 = setup.step(setup.w0, 1, notes)
    settle_notes(notes)
    W = seen[0]
    direction = torch.sign(W.mean(0) - w0)
    moved = direction != 0
    want = float((torch.sign(w1 - w0)[moved] != direction[moved]).float().mean())
    assert 0 < want < 1 and notes["against_mean_direction"] == [want]
    # nothing moved (every local model is the global model, 0): 0 / 0
    setup.server.pipeline = lambda W, f, contexts=None: W[0]
    still = {"against_mean_direction": []}
    from fedpoison.simulation import attack_and_aggregate

    zero = torch.zeros_like(w1)
    attack_and_aggregate(setup.server, setup.adversary, zero.expand(8, -1).clone(),
                         torch.arange(8), zero, 2,
                         still, setup.detection)
    assert math.isnan(settle_notes(still)["against_mean_direction"][0])


def _spy(pipeline, seen):  # type: ignore[no-untyped-def]
    def call(W, f, contexts=None):  # type: ignore[no-untyped-def]
        seen.append(W.clone())
        return pipeline(W, f, contexts=contexts)

    call.preaggs = pipeline.preaggs  # type: ignore[attr-defined]
    call.rule = pipeline.rule  # type: ignore[attr-defined]
    call.needs = pipeline.needs  # type: ignore[attr-defined]
    return call
