"""One federated-learning run under attack: the loop of the paper's Section 2.1.

Each iteration: the server sends the global model w_Re to the sampled workers (Step I); all
of them run local SGD in one batched computation (Step II); the adversary replaces the
compromised workers' local models with crafted ones when this iteration is poisoned
(Section 3); the server's defense drops suspected models (Section 5) and its pre-aggregators
and rule aggregate the rest (Step III). :func:`prepare` builds a :class:`Setup` (task,
:class:`~fedpoison.server.Server`, :class:`~fedpoison.adversary.Adversary`) from a resolved
config, :meth:`Setup.step` runs one iteration, :func:`run` the whole loop. A run is a pure
function of its config: the same config gives the same numbers, bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedpoison import __version__, registry
from fedpoison.adversary import Adversary, choose_compromised, poisoned_iterations
from fedpoison.attacks.base import DataAttackContext, TrainingData
from fedpoison.config import RunConfig
from fedpoison.data import Dataset, Partition, load
from fedpoison.defenses.base import BoundDefense
from fedpoison.errors import ConfigError
from fedpoison.memory import Releaser, tune_cpu_allocator
from fedpoison.models import build_model
from fedpoison.notes import note_value, settle_notes
from fedpoison.progress import Bar, Progress, bar_factory
from fedpoison.rng import generator
from fedpoison.server import Notes, Server, ServerData, bind_pipeline
from fedpoison.tasks import Task
from fedpoison.tracking import RunLog, Tracker

PHASES = ("setup", "train", "attack", "defense", "aggregate", "evaluate")

__all__ = ["PHASES", "Detection", "RunResult", "Setup", "attack_and_aggregate",
           "poisoned_iterations", "prepare", "run", "summarize_notes", "training_subset"]


@dataclass
class RunResult:
    """What one run produced. ``curve`` holds [iteration, test error] at every evaluation.

    A run whose attack declares a backdoor also has its attack success rate (ASR: the share
    of the non-target test examples, trigger stamped, that the global model classifies as
    the target class): ``asr_curve`` [iteration, ASR] at every evaluation, ``final_asr`` at
    the last one and ``max_asr`` the highest. Other runs have ``None`` there, and their JSON
    has no ASR keys.

    ``model`` is the final global model (flat, on the CPU) and ``model_layout`` the names and
    shapes of its tensors in that vector when the model declares them; neither is part of
    :meth:`to_json`. :meth:`save_model` writes them to a file (:mod:`fedpoison.modelfile`).
    """

    config: dict[str, Any]
    config_hash: str
    final_error: float
    final_loss: float
    best_error: float
    best_iteration: int
    curve: list[tuple[int, float]]
    loss_curve: list[tuple[int, float]]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, dict[str, float]] = field(default_factory=dict)
    version: str = __version__
    final_asr: float | None = None
    max_asr: float | None = None
    asr_curve: list[tuple[int, float]] | None = None
    model: Tensor | None = field(default=None, repr=False, compare=False)
    model_layout: list[tuple[str, tuple[int, ...]]] | None = field(default=None, repr=False,
                                                                    compare=False)

    def model_tensors(self) -> dict[str, Tensor]:
        """The final global model as ``{name: tensor}`` (``{"flat": w}`` without a layout)."""
        from fedpoison.modelfile import model_tensors

        if self.model is None:
            raise ValueError("this RunResult holds no model (it was read back from JSON)")
        return model_tensors(self.model, self.model_layout)

    def save_model(self, path: str | Path) -> Path:
        """Write the final global model with this run's result as metadata (a file that
        ``torch.load(path, weights_only=True)`` and :func:`fedpoison.load_model` read)."""
        from fedpoison.modelfile import save_model

        if self.model is None:
            raise ValueError("this RunResult holds no model (it was read back from JSON)")
        return save_model(path, self.model, self.model_layout, self.to_json())

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite losses become ``None``)."""

        def clean(x: float) -> float | None:
            return x if math.isfinite(x) else None

        asr = {} if self.asr_curve is None else {
            "final_asr": self.final_asr, "max_asr": self.max_asr,
            "asr_curve": [[t, a] for t, a in self.asr_curve]}
        return {
            "final_error": self.final_error,
            "final_loss": clean(self.final_loss),
            "best_error": self.best_error,
            "best_iteration": self.best_iteration,
            "curve": [[t, e] for t, e in self.curve],
            "loss_curve": [[t, clean(v)] for t, v in self.loss_curve],
            "seconds": self.seconds,
            "timings": self.timings,
            "diagnostics": self.diagnostics,
            "config": self.config,
            "config_hash": self.config_hash,
            "version": self.version,
            **asr,
        }


def summarize_notes(notes: Notes) -> dict[str, dict[str, float]]:
    """Per diagnostic: how many iterations reported it and the mean, median, min and max of
    its values (for a 0/1 flag the mean is the fraction of those iterations where it held).
    Non-finite values are left out of the statistics."""
    out: dict[str, dict[str, float]] = {}
    settle_notes(notes)
    for name, values in sorted(notes.items()):
        v = sorted(x for x in values if math.isfinite(x))
        if not v:
            out[name] = {"n": len(values)}
            continue
        out[name] = {"n": len(values), "mean": statistics.fmean(v),
                     "median": statistics.median(v), "min": v[0], "max": v[-1]}
    return out


def training_subset(ds: Dataset, n: int, g: torch.Generator) -> Dataset:
    """``n`` training examples sampled uniformly without replacement (Section 4.4)."""
    if n > ds.x_train.shape[0]:
        raise ConfigError("train_subset", f"at most {ds.x_train.shape[0]} for {ds.name}, got {n}")
    keep = torch.randperm(ds.x_train.shape[0], generator=g)[:n].sort()[0]
    return dataclasses.replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep])


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda requested but torch.cuda.is_available() is False")
    return torch.device(name)


@dataclass
class Setup:
    """Everything one run needs, built once by :func:`prepare`."""

    config: RunConfig
    task: Task
    server: Server
    adversary: Adversary
    w0: Tensor
    labels_clean: Tensor
    labels_poisoned: Tensor
    train_generator: torch.Generator
    sample_generator: torch.Generator
    detection: Detection = field(default_factory=lambda: Detection())
    inputs_poisoned: Tensor | None = None  # training inputs in poisoned iterations (rows)
    backdoor_test: tuple[Tensor, Tensor] | None = None  # stamped non-target test set

    def attack_success_rate(self, w: Tensor) -> float | None:
        """The share of the stamped non-target test examples that ``w`` classifies as the
        backdoor's target class (``None`` without a backdoor)."""
        if self.backdoor_test is None:
            return None
        x, y = self.backdoor_test
        error, _ = self.task.evaluate_many(w[None], x, y)
        return 1.0 - float(error[0])
    #: Every worker's local momentum buffer [m, d] (``None`` unless momentum > 0).
    velocity: Tensor | None = None

    def workers(self) -> Tensor:
        """The workers of this iteration: all of them, or a sorted uniform sample of k."""
        m, k = self.config.workers, self.config.per_iteration
        if k == m:
            return torch.arange(m)
        return torch.randperm(m, generator=self.sample_generator)[:k].sort()[0]

    def step(self, w: Tensor, t: int, notes: Notes,
             timings: dict[str, float] | None = None) -> Tensor:
        """Iteration ``t`` (1-based) from the global model ``w``: the next global model."""
        cfg = self.config
        tic = time.perf_counter()
        workers = self.workers()
        attacked = bool(self.adversary.schedule[t - 1])
        labels = self.labels_poisoned if attacked else self.labels_clean
        inputs = self.inputs_poisoned if attacked else None
        if cfg.momentum or cfg.weight_decay:
            W = self.task.local_train_momentum(
                w, workers, labels, cfg.local_rounds, self.train_generator,
                momentum=cfg.momentum, weight_decay=cfg.weight_decay, velocity=self.velocity,
                inputs=inputs)
        else:
            W = self.task.local_train(w, workers, labels, cfg.local_rounds,
                                      self.train_generator, inputs=inputs)
        toc = _lap(timings, "train", tic)
        return attack_and_aggregate(self.server, self.adversary, W, workers, w, t, notes,
                                    self.detection, timings, toc)


def attack_and_aggregate(server: Server, adversary: Adversary, W: Tensor, workers: Tensor,
                         w: Tensor, t: int, notes: Notes, detection: Detection,
                         timings: dict[str, float] | None = None,
                         since: float | None = None) -> Tensor:
    """The server side of iteration ``t``: the next global model from the local models
    ``W`` (rows: the ids ``workers``, ascending) trained from ``w``.

    The adversary replaces its rows (in place) in a poisoned iteration, the server's defense,
    pre-aggregators and rule aggregate, and the diagnostics are recorded (``notes``,
    ``detection``). :meth:`Setup.step` and the Flower strategy (``fedpoison.flower``) share
    it, so both compute the same model and record the same diagnostics.
    """
    toc = time.perf_counter() if since is None else since
    # The direction the local models moved before any attack (their mean), for the
    # against_mean_direction diagnostic.
    mean_direction = torch.sign(W.mean(0) - w)
    crafted = adversary.craft(W, workers, w, t, notes)
    if adversary.crafts_models and bool(adversary.schedule[t - 1]):
        toc = _lap(timings, "attack", toc)

    if server.defense is not None:
        W, crafted = server.defend(W, w, t, notes, crafted, workers)
        toc = _lap(timings, "defense", toc)
    else:
        server.defend(W, w, t)  # nothing to drop; resets what was removed
    w_next = server.aggregate(W, w, t, notes, crafted, workers)
    if server.removed is not None:
        detection.add(server.removed, adversary.is_compromised[workers])
    # the share of moved coordinates that went against it; 0 / 0 = NaN when none moved.
    # Kept on the device (notes are read at evaluations), so no iteration waits for it.
    moved = mean_direction != 0
    against = (torch.sign(w_next - w) != mean_direction) & moved
    notes.setdefault("against_mean_direction", []).append(
        note_value(against.sum().to(torch.float32) / moved.sum().to(torch.float32)))
    _lap(timings, "aggregate", toc)
    return w_next


@dataclass
class Detection:
    """How well the server's defense (or a rule that reports removals) told compromised from
    benign workers, over the iterations where it removed anything: counts of removed and
    kept models of compromised and benign workers."""

    tp: int = 0  # compromised, removed
    fp: int = 0  # benign, removed
    fn: int = 0  # compromised, kept
    tn: int = 0  # benign, kept
    iterations: int = 0

    def add(self, removed: Tensor, compromised: Tensor) -> None:
        removed, compromised = removed.cpu(), compromised.cpu()
        self.tp += int((removed & compromised).sum())
        self.fp += int((removed & ~compromised).sum())
        self.fn += int((~removed & compromised).sum())
        self.tn += int((~removed & ~compromised).sum())
        self.iterations += 1

    def summary(self) -> dict[str, float]:
        """Counts and rates: true/false positive rate, precision, recall (NaN when undefined)."""
        def rate(a: int, b: int) -> float:
            return a / b if b else math.nan

        return {"n": self.iterations, "tp": self.tp, "fp": self.fp, "fn": self.fn,
                "tn": self.tn, "tpr": rate(self.tp, self.tp + self.fn),
                "fpr": rate(self.fp, self.fp + self.tn),
                "precision": rate(self.tp, self.tp + self.fp),
                "recall": rate(self.tp, self.tp + self.fn)}


def _lap(timings: dict[str, float] | None, phase: str, since: float) -> float:
    now = time.perf_counter()
    if timings is not None:
        timings[phase] += now - since
    return now


def prepare(config: RunConfig, dataset: Dataset | None = None,
            progress: Progress = False) -> Setup:
    """Build the task, server and adversary of ``config`` (resolved here if it is not)."""
    cfg = config.resolve()
    assert cfg.iterations is not None and cfg.f is not None and cfg.batch_size is not None
    assert cfg.lr is not None
    device = _resolve_device(cfg.device)
    ds = dataset if dataset is not None else load(cfg.dataset, seed=cfg.seed)
    if cfg.train_subset is not None:
        ds = training_subset(ds, cfg.train_subset, generator(cfg.seed, "subset"))
    model = build_model(cfg.model, ds)
    tune_cpu_allocator()  # reuse freed memory instead of faulting it in again (memory.py)
    m, c = cfg.workers, cfg.compromised
    partition = _split(cfg, ds)
    # Which workers are compromised: a seeded uniform choice or the first c (docs/choices.md).
    compromised = choose_compromised(m, c, cfg.compromised_choice,
                                     generator(cfg.seed, "compromised"))
    schedule = poisoned_iterations(cfg.iterations, cfg.poison_fraction,
                                   generator(cfg.seed, "schedule"))
    adversary = Adversary.build(
        cfg.attack, cfg.attack_options, compromised=compromised, workers=m, schedule=schedule,
        knowledge=cfg.knowledge, goal=cfg.goal, f=cfg.f, generator=generator(cfg.seed, "attack"),
        server_rule=cfg.rule, server_rule_options=cfg.rule_options,
        server_preaggs=cfg.preaggregators, init=model.init,
    )

    clean = TrainingData(x=ds.x_train, y=ds.y_train, owner=partition.owner)
    poisoned_data = adversary.poison_data(DataAttackContext(
        clean, compromised, ds.num_classes, generator(cfg.seed, "attack"), seed=cfg.seed,
        dataset=cfg.dataset, train_subset=cfg.train_subset, progress=progress))
    if poisoned_data.owner is not partition.owner:
        partition = Partition.from_owner(poisoned_data.owner, m)
    # Label-changing attacks honour the poisoned-iteration schedule, and so does one that
    # changes inputs in place (same examples, same owners: a backdoor's trigger): the workers
    # see the changed labels and inputs in poisoned iterations only. An attack that adds
    # examples (e.g. back-gradient poisoning) is in the data for the whole run.
    same_examples = poisoned_data.x is clean.x
    stamped = (not same_examples and poisoned_data.owner is clean.owner
               and poisoned_data.x.shape == clean.x.shape)
    task = Task(
        ds, model, partition, lr=cfg.lr, batch_size=cfg.batch_size, device=device,
        x_train=clean.x if stamped else poisoned_data.x,
    )
    labels_poisoned = poisoned_data.y.to(device)
    labels_clean = clean.y.to(device) if same_examples or stamped else labels_poisoned
    inputs_poisoned = task.rows(poisoned_data.x) if stamped else None
    backdoor_test = adversary.backdoor_test(task.x_test, task.y_test, ds.num_classes)

    pipeline = bind_pipeline(cfg.rule, cfg.rule_options, cfg.preaggregators)
    defense = None
    if cfg.defense != "none":
        spec = registry.get("defense", cfg.defense)
        defense = BoundDefense(spec, cfg.defense_options)
    server_data = None
    if (defense is not None and defense.spec.needs_validation) or "server_data" in pipeline.needs:
        server_data = _server_data(task, cfg)
    server = Server(pipeline, cfg.f, generator(cfg.seed, "server"), defense, server_data)

    w0 = model.init(generator(cfg.seed, "init")).to(device)
    velocity = torch.zeros(m, w0.numel(), device=device) if cfg.momentum > 0 else None
    return Setup(cfg, task, server, adversary, w0, labels_clean, labels_poisoned,
                 generator(cfg.seed, "train"), generator(cfg.seed, "sample"),
                 inputs_poisoned=inputs_poisoned, backdoor_test=backdoor_test,
                 velocity=velocity)


def _split(cfg: RunConfig, ds: Dataset) -> Partition:
    """The training set over the workers by the configured split (seeded ``split`` stream)."""
    spec = registry.get("split", cfg.split)
    try:
        partition = spec.impl(ds.y_train, cfg.workers, ds.num_classes,
                              generator(cfg.seed, "split"), **cfg.split_options)
    except ConfigError:
        raise
    except ValueError as e:  # a precondition that needs the data (e.g. enough examples)
        raise ConfigError("split", f"{spec.label} of {ds.name}: {e}") from None
    if not isinstance(partition, Partition) or partition.owner.shape != ds.y_train.shape:
        raise ConfigError("split", f"{spec.label}: must return a Partition of the "
                                   f"{ds.y_train.numel()} training examples")
    return partition


def _server_data(task: Task, cfg: RunConfig) -> ServerData:
    """The server's validation set: examples sampled from the test set (Section 5)."""
    n_test = task.x_test.shape[0]
    val = torch.randperm(n_test, generator=generator(cfg.seed, "validation"))
    val = val[: min(cfg.validation_size, n_test)].to(task.device)
    x_val, y_val = task.x_test[val], task.y_test[val]

    def evaluate(models: Tensor) -> tuple[Tensor, Tensor]:
        return task.evaluate_many(models, x_val, y_val)

    def train(w: Tensor, rounds: int, g: torch.Generator) -> Tensor:
        return task.train_on(w, x_val, y_val, rounds, g)

    return ServerData(x_val, y_val, evaluate, train)


def run(
    config: RunConfig,
    *,
    progress: Progress = True,
    dataset: Dataset | None = None,
    on_evaluate: Callable[[int, float], None] | None = None,
    track: Sequence[str | Tracker] = (),
) -> RunResult:
    """Simulate one run of federated learning under the configured attack.

    ``progress``: a bar over the iterations (and long preparation such as a poison set):
    True (the default) uses ``tqdm.auto`` (a widget in notebooks, stderr elsewhere), False
    shows nothing, a bar factory is used as given (:mod:`fedpoison.progress`). ``dataset``
    lets callers (tests, sweeps) pass an already loaded dataset; by default it is loaded
    from the data home. ``on_evaluate(iteration, error)`` is called at each evaluation.
    ``track``: targets that log every evaluation (``"tensorboard:DIR"``, ``"mlflow"``,
    ``"mlflow:URI"`` or :class:`~fedpoison.tracking.Tracker` objects; :mod:`fedpoison.tracking`).
    """
    t_start = time.perf_counter()
    timings = dict.fromkeys(PHASES, 0.0)
    log = RunLog(track) if track else None  # a missing library fails before any work
    setup = prepare(config, dataset, progress)
    cfg = setup.config
    assert cfg.iterations is not None
    curve: list[tuple[int, float]] = []
    loss_curve: list[tuple[int, float]] = []
    asr_curve: list[tuple[int, float]] | None = [] if setup.backdoor_test is not None else None
    notes: Notes = {}
    timings["setup"] = time.perf_counter() - t_start

    w = setup.w0
    if log is not None:
        log.start(cfg.to_dict(), cfg.config_hash())
    bar = _progress_bar(cfg, progress)
    releaser = Releaser()  # free heap memory back to the OS now and then (fedpoison.memory)
    try:
        for t in range(1, cfg.iterations + 1):
            w = setup.step(w, t, notes, timings)
            if t % cfg.eval_every == 0 or t == cfg.iterations:
                tic = time.perf_counter()
                ev = setup.task.evaluate(w)
                curve.append((t, ev.error))
                loss_curve.append((t, ev.loss))
                asr = setup.attack_success_rate(w)
                if asr_curve is not None and asr is not None:
                    asr_curve.append((t, asr))
                if on_evaluate is not None:
                    on_evaluate(t, ev.error)
                if log is not None:
                    metrics = dataclasses.asdict(ev)
                    if asr is not None:
                        metrics["asr"] = asr
                    log.evaluation(t, metrics, notes)
                bar.set_postfix_str(f"error={ev.error:.4f}", refresh=False)
                releaser.maybe()
                timings["evaluate"] += time.perf_counter() - tic
            bar.update(1)
    except BaseException as e:
        if log is not None:
            log.finish({}, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        bar.close()

    best_t, best_err = min(curve, key=lambda te: (te[1], te[0]))
    diagnostics = summarize_notes(notes)
    if setup.detection.iterations:
        diagnostics["detection"] = setup.detection.summary()
    if log is not None:
        summary = {"final/error": curve[-1][1], "final/loss": loss_curve[-1][1],
                   "final/best_error": best_err, "final/best_iteration": best_t,
                   "final/seconds": time.perf_counter() - t_start}
        summary.update({f"final/detection_{k}": v
                        for k, v in diagnostics.get("detection", {}).items()})
        log.finish(summary)
    return RunResult(
        config=cfg.to_dict(),
        config_hash=cfg.config_hash(),
        final_error=curve[-1][1],
        final_loss=loss_curve[-1][1],
        best_error=best_err,
        best_iteration=best_t,
        curve=curve,
        loss_curve=loss_curve,
        seconds=time.perf_counter() - t_start,
        timings=timings,
        diagnostics=diagnostics,
        final_asr=asr_curve[-1][1] if asr_curve else None,
        max_asr=max(a for _, a in asr_curve) if asr_curve else None,
        asr_curve=asr_curve,
        model=w.detach().cpu(),
        model_layout=_layout_of(setup.task.model),
    )


def _layout_of(model: Any) -> list[tuple[str, tuple[int, ...]]] | None:
    """Names and shapes of the model's tensors in its flat vector (its ``layout``), if any."""
    layout = getattr(model, "layout", None)
    if layout is None:
        return None
    return [(slot.name, tuple(slot.shape)) for slot in layout]


def _progress_bar(cfg: RunConfig, progress: Progress) -> Bar:
    desc = f"{cfg.dataset}/{cfg.model} {cfg.rule}"
    if cfg.attack != "none":
        desc += f" ← {cfg.attack}" + (f"({cfg.knowledge})" if cfg.knowledge else "")
    return bar_factory(progress)(total=cfg.iterations, desc=desc, unit="it")
