"""Experiment tracking: every evaluation of a run logged to TensorBoard and/or MLflow.

Targets (``fedpoison run --log TARGET``, ``run(config, track=[...])``):

``tensorboard:DIR``  event files in ``DIR/<run name>`` (``tensorboard --logdir DIR``)
``mlflow``           the MLflow tracking URI MLflow itself chooses (``MLFLOW_TRACKING_URI``)
``mlflow:URI``       an MLflow tracking URI: a server (``mlflow:http://host:5000``), a
                     database (``mlflow:sqlite:///mlflow.db``, with the full ``mlflow``
                     package) or a folder (``mlflow:file:./mlruns``; MLflow 3 asks for
                     ``MLFLOW_ALLOW_FILE_STORE=true`` to use its file store)

What is logged, at each evaluation (step = iteration): every number of the test evaluation
(``test/error``, ``test/loss``, and any other a task reports, e.g. an attack success rate),
the mean of each diagnostic the components recorded since the previous evaluation
(``diagnostics/NAME``) and the elapsed seconds (``time/seconds``); at the start the resolved
config (TensorBoard: as text; MLflow: as parameters, with the run key as a tag); at the end
the final and best error and the defense's detection rates (``final/...``). Each evaluation
is written when it happens, so an interrupted run keeps what it logged (MLflow marks it
KILLED or FAILED).

Both libraries are optional (``pip install 'fedpoison[tracking]'``) and imported only when a
target asks for them.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from fedpoison import __version__
from fedpoison.errors import ConfigError

EXTRA = "pip install 'fedpoison[tracking]'"
TARGETS = "tensorboard:DIR, mlflow or mlflow:URI"


class Tracker(Protocol):
    """Where a run's evaluations go."""

    def start(self, config: Mapping[str, Any], key: str) -> None: ...

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def finish(self, summary: Mapping[str, float], status: str) -> None: ...


def run_name(config: Mapping[str, Any], key: str) -> str:
    """``dataset-model-rule-attack-KEY-TIME``: readable, and unique per start."""
    parts = [str(config.get(k)) for k in ("dataset", "model", "rule", "attack")]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return "-".join([*parts, key, stamp])


class TensorBoardTracker:
    """Scalars in TensorBoard event files (``torch.utils.tensorboard``)."""

    def __init__(self, logdir: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("log", f"tensorboard:{logdir} needs the tensorboard package: "
                                     f"{EXTRA}") from None
        self._writer_type = SummaryWriter
        self.logdir = logdir
        self.path: str | None = None
        self._writer: Any = None

    def start(self, config: Mapping[str, Any], key: str) -> None:
        import os

        self.path = os.path.join(self.logdir, run_name(config, key))
        self._writer = self._writer_type(log_dir=self.path)
        self._writer.add_text("config", "```\n" + json.dumps(dict(config), indent=1,
                                                             sort_keys=True) + "\n```")
        self._writer.add_text("run_key", key)
        self._writer.flush()

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def finish(self, summary: Mapping[str, float], status: str) -> None:
        if self._writer is None:
            return
        for name, value in summary.items():
            self._writer.add_scalar(name, value, 0)
        self._writer.add_text("status", status)
        self._writer.close()


class MLflowTracker:
    """An MLflow run in experiment ``fedpoison`` (through ``MlflowClient``: no global state)."""

    EXPERIMENT = "fedpoison"

    def __init__(self, uri: str | None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("log", f"mlflow needs the mlflow package: {EXTRA}") from None
        from mlflow.exceptions import MlflowException

        self.uri = uri
        self.run_id: str | None = None
        try:  # reach the backend now: a bad URI fails before the run, not after it
            self._client = MlflowClient(tracking_uri=uri)
            self._experiment = self._client.get_experiment_by_name(self.EXPERIMENT)
        except MlflowException as e:
            first = str(e.message if hasattr(e, "message") else e).split(". ")[0]
            hint = (" (MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE=true; "
                    "or log to mlflow:sqlite:///mlflow.db with the full mlflow package, or to "
                    "a tracking server)") if "file" in first.lower() else ""
            raise ConfigError("log", f"mlflow{':' + uri if uri else ''}: {first}{hint}"
                              ) from None
        except ImportError as e:
            raise ConfigError("log", f"mlflow{':' + uri if uri else ''}: needs {e.name} (the "
                                     "full mlflow package: pip install mlflow)") from None

    def start(self, config: Mapping[str, Any], key: str) -> None:
        from mlflow.entities import Param, RunTag

        client = self._client
        exp = self._experiment
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(
            self.EXPERIMENT)
        run = client.create_run(exp_id, run_name=run_name(config, key),
                                tags={"fedpoison.run_key": key})
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in sorted(_flat(config).items())]
        for i in range(0, len(params), 100):
            client.log_batch(self.run_id, params=params[i:i + 100],
                             tags=[RunTag("fedpoison.version", __version__)] if i == 0
                             else [])

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(_mlflow_key(k), v, now, step) for k, v in metrics.items()]
        if batch and self.run_id is not None:
            self._client.log_batch(self.run_id, metrics=batch)

    def finish(self, summary: Mapping[str, float], status: str) -> None:
        if self.run_id is None:
            return
        self.log(0, summary)
        self._client.set_terminated(self.run_id, status)


def _mlflow_key(name: str) -> str:
    return name  # MLflow accepts '/', '.', '-', '_' and alphanumerics


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
        else:
            out[f"{prefix}{k}"] = v
    return out


def parse_target(text: str) -> tuple[str, str | None]:
    """``("tensorboard", DIR)`` or ``("mlflow", URI or None)``; ConfigError otherwise."""
    kind, _, rest = text.partition(":")
    if kind == "tensorboard":
        if not rest.strip():
            raise ConfigError("log", f"tensorboard needs a folder: tensorboard:DIR, got {text!r}")
        return kind, rest
    if kind == "mlflow":
        return kind, rest or None
    raise ConfigError("log", f"got {text!r}; allowed: {TARGETS}")


def make_tracker(target: str | Tracker) -> Tracker:
    """A tracker for a target string (see the module docstring), or the tracker given."""
    if not isinstance(target, str):
        return target
    kind, where = parse_target(target)
    if kind == "tensorboard":
        assert where is not None
        return TensorBoardTracker(where)
    return MLflowTracker(where)


class RunLog:
    """What a run hands its trackers: evaluations, diagnostics since the last one, timing."""

    def __init__(self, targets: Sequence[str | Tracker]) -> None:
        self.trackers = [make_tracker(t) for t in targets]
        self._seen: dict[str, int] = {}
        self._t0 = time.perf_counter()

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def start(self, config: Mapping[str, Any], key: str) -> None:
        self._t0 = time.perf_counter()
        for t in self.trackers:
            t.start(config, key)

    def evaluation(self, step: int, evaluation: Mapping[str, Any],
                   notes: dict[str, list[Any]]) -> None:
        from fedpoison.notes import settle_notes

        settle_notes(notes)  # values still on the device become floats, in one transfer
        metrics: dict[str, float] = {}
        for name, value in evaluation.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[f"test/{name}"] = float(value)
        for name, values in notes.items():
            new = [v for v in values[self._seen.get(name, 0):] if math.isfinite(v)]
            self._seen[name] = len(values)
            if new:
                metrics[f"diagnostics/{name}"] = sum(new) / len(new)
        metrics["time/seconds"] = time.perf_counter() - self._t0
        for t in self.trackers:
            t.log(step, metrics)

    def finish(self, summary: Mapping[str, float], status: str = "FINISHED") -> None:
        clean = {k: float(v) for k, v in summary.items()
                 if isinstance(v, int | float) and math.isfinite(v)}
        for t in self.trackers:
            t.finish(clean, status)
