"""RunConfig: every knob of one simulated federated-learning run, resolved and validated once.

Defaults follow the paper's Table 1 and Section 4.1 (m = 100, c = 20, the non-IID split with
p = 0.5, one local SGD round, all workers every iteration). Components (rule, attack,
defense, pre-aggregators, dataset, model, split) are named here and configured through their
own options (``rule_options={"beta": 20}``); each component's spec says which options it
takes, their defaults and ranges (``fedpoison list``). ``None`` in a field means "the
documented default for this dataset/model"; :meth:`RunConfig.resolve` fills every default in
and validates the result exactly once, and the run's key is a hash of that resolved config.

Older flat keys (``beta``, ``epsilon``, ``b``, ``direction``, ``poison_budget``,
``poison_placement``, ``noniid``) are aliases that components declare for their options; a
config dict or the CLI may still use them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from fedpoison.errors import ConfigError
from fedpoison.resolve import OPTION_FIELDS, normalize, resolve_config


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _freeze(options: Any) -> dict[str, Any]:
    return dict(options) if isinstance(options, Mapping) else options


@dataclass(frozen=True)
class RunConfig:
    """One run. Field names are the CLI's option names with ``_`` for ``-``."""

    dataset: str = field(default="mnist", metadata=_help("dataset (fedpoison list datasets)"))
    model: str = field(default="lr", metadata=_help("model (fedpoison list models)"))
    rule: str = field(default="mean", metadata=_help(
        "the server's aggregation rule (fedpoison list rules)"))
    workers: int = field(default=100, metadata=_help("number of worker devices m"))
    compromised: int = field(default=20, metadata=_help(
        "number of compromised workers c (< workers)"))
    compromised_choice: str | None = field(default="random", metadata=_help(
        "which workers are compromised: random (a seeded uniform choice of c) or first "
        "(workers 0..c−1, whole label groups of the non-IID split); null without attack"))
    split: str = field(default="noniid", metadata=_help(
        "how the training set is split over workers (fedpoison list splits)"))
    iterations: int | None = field(default=None, metadata=_help(
        "global iterations (default: 500 for lr, 2000 for neural networks)"))
    sample: int | None = field(default=None, metadata=_help(
        "workers sampled per iteration, at most workers (default: all)"))
    local_rounds: int = field(default=1, metadata=_help("local SGD steps per iteration"))
    batch_size: int | None = field(default=None, metadata=_help(
        "local mini-batch size (default: the dataset's, 32; 64 for fashion-mnist)"))
    lr: float | None = field(default=None, metadata=_help(
        "local SGD learning rate > 0 (default: the model's for this dataset, docs/choices.md)"))
    momentum: float = field(default=0.0, metadata=_help(
        "local SGD momentum μ in [0, 1): every worker keeps its own momentum buffer across "
        "iterations, u ← μu + g, w ← w − lr·u (0: plain SGD, the paper's)"))
    weight_decay: float = field(default=0.0, metadata=_help(
        "local SGD weight decay λ ≥ 0: the gradient is ∇F(w) + λw (0: none, the paper's)"))
    seed: int = field(default=0, metadata=_help("seed of every random stream of the run"))
    attack: str = field(default="none", metadata=_help(
        "attack of the compromised workers (fedpoison list attacks)"))
    knowledge: str | None = field(default="full", metadata=_help(
        "model attacks: what the attacker sees, full or partial (Section 2.3)"))
    goal: str | None = field(default="directed", metadata=_help(
        "model attacks: directed (Section 3) or deviation (Appendix B)"))
    f: int | None = field(default=None, metadata=_help(
        "the server's assumed number of compromised workers among those it aggregates "
        "(default: c, or ceil(c·sample/workers) when sampling)"))
    poison_fraction: float = field(default=1.0, metadata=_help(
        "fraction of iterations the attack poisons, in [0, 1] (Figure 5c)"))
    defense: str = field(default="none", metadata=_help(
        "defense before aggregation (fedpoison list defenses)"))
    validation_size: int = field(default=100, metadata=_help(
        "examples of the server's validation set, drawn from the test set (Section 5)"))
    train_subset: int | None = field(default=None, metadata=_help(
        "train on n uniformly sampled training examples (Table 5; default: all)"))
    eval_every: int = field(default=10, metadata=_help("iterations between test evaluations"))
    device: str = field(default="cpu", metadata=_help("cpu, cuda or auto"))
    rule_options: Mapping[str, Any] = field(default_factory=dict, metadata=_help(
        "options of the rule, e.g. {beta: 20}"))
    attack_options: Mapping[str, Any] = field(default_factory=dict, metadata=_help(
        "options of the attack, e.g. {epsilon: 0.1}"))
    defense_options: Mapping[str, Any] = field(default_factory=dict, metadata=_help(
        "options of the defense"))
    preaggregators: tuple[Any, ...] = field(default=(), metadata=_help(
        "pre-aggregation steps before the rule, in order: names or {name, options}"))
    split_options: Mapping[str, Any] = field(default_factory=dict, metadata=_help(
        "options of the split, e.g. {alpha: 0.5}"))
    noniid: dataclasses.InitVar[float | None] = None
    """The paper's degree of non-IID p: an alias of the default split's option (kept so that
    ``RunConfig(noniid=0.3)`` works as it did before splits were components)."""

    def __post_init__(self, noniid: float | None) -> None:
        for name in (*OPTION_FIELDS.values(),):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, {})
            elif not isinstance(value, Mapping):
                raise ConfigError(name, f"must be a mapping of option names to values, got "
                                        f"{value!r}")
            else:
                object.__setattr__(self, name, dict(value))
        object.__setattr__(self, "preaggregators", _preagg_tuple(self.preaggregators))
        if noniid is not None:
            fields_ = normalize({"split": self.split, "split_options": self.split_options,
                                 "noniid": noniid}, type(self))
            object.__setattr__(self, "split_options", fields_["split_options"])

    # ------------------------------------------------------------------ defaults
    @property
    def per_iteration(self) -> int:
        """Number of local models the server aggregates each iteration."""
        return self.workers if self.sample is None else self.sample

    def resolve(self) -> RunConfig:
        """The same config with every default filled in, validated: the config that runs.

        Raises ``ConfigError`` naming the first invalid field and its allowed range. A
        resolved config resolves to itself; nothing is validated twice.
        """
        if getattr(self, "_resolved", False):
            return self
        out = resolve_config(self)
        object.__setattr__(out, "_resolved", True)
        return out

    resolved = resolve  # the earlier name

    # ----------------------------------------------------------------- identity
    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what a store records and the run key hashes).

        The default split is written as it was before splits were components: its options
        under their top-level aliases (``noniid: 0.5``) and no ``split`` keys, so that the
        configs of the paper's runs keep their form in stores and exports.
        """
        d = dataclasses.asdict(self)
        d["preaggregators"] = [{"name": n, "options": dict(o)} for n, o in self.preaggregators]
        compact = _default_split_form(self.split, self.split_options)
        if compact is not None:
            del d["split"], d["split_options"]
            d.update(compact)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        """A config from a mapping: field names, dotted option keys (``rule_options.beta``),
        and the option aliases components declare (``beta``). Unknown keys raise."""
        return cls(**normalize(d, cls))

    def config_hash(self) -> str:
        """SHA-256 (hex, 16 chars) of the resolved config, the code and the data: a run's key.

        The code is a fingerprint of the package and of every user component the run uses
        (comments and docstrings ignored), so a store never serves a result of other code;
        a user dataset's content hash is included likewise.
        """
        from fedpoison.provenance import run_fingerprint

        cfg = self.resolve()
        payload = {"config": cfg.to_dict(), **run_fingerprint(cfg)}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _default_split_form(split: str, options: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{alias: value}`` of the default split's options when every one has an alias; None
    for any other split (or an option without an alias)."""
    default = next(f.default for f in fields(RunConfig) if f.name == "split")
    if split != default:
        return None
    from fedpoison import registry

    spec = registry.get("split", split)
    out = {}
    for key, value in options.items():
        option = spec.option(key)
        if option is None or option.alias is None:
            return None
        out[option.alias] = value
    return out


def _preagg_tuple(value: Any) -> tuple[tuple[str, dict[str, Any]], ...]:
    """Normalize pre-aggregators to ``((name, options), ...)``.

    Accepts names, ``"name:k=v,k=v"`` strings, ``{"name": ..., "options": {...}}`` mappings
    and ``(name, options)`` pairs.
    """
    if value is None:
        return ()
    if isinstance(value, str | Mapping):
        value = [value]
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(parse_component_string(item, "preaggregators"))
        elif isinstance(item, Mapping):
            unknown = set(item) - {"name", "options"}
            if "name" not in item or unknown:
                raise ConfigError("preaggregators", f"each item needs 'name' and optional "
                                                    f"'options', got {dict(item)!r}")
            out.append((str(item["name"]), dict(item.get("options") or {})))
        elif isinstance(item, tuple | list) and len(item) == 2:
            out.append((str(item[0]), dict(item[1] or {})))
        else:
            raise ConfigError("preaggregators", f"got {item!r}; give a name, 'name:k=v' or "
                                                "{name, options}")
    return tuple(out)


def parse_component_string(text: str, what: str) -> tuple[str, dict[str, Any]]:
    """``"bucketing:s=2,shuffle=true"`` -> ``("bucketing", {"s": "2", "shuffle": "true"})``
    (values are converted to the option's type when the config is resolved)."""
    name, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, val = part.partition("=")
        if not eq or not key.strip():
            raise ConfigError(what, f"{text!r}: options are key=value pairs, got {part!r}")
        options[key.strip()] = val.strip()
    if not name.strip():
        raise ConfigError(what, f"{text!r}: a component name comes first")
    return name.strip(), options


def config_fields() -> tuple[str, ...]:
    return tuple(f.name for f in fields(RunConfig))


def field_help(name: str) -> str:
    return next(f.metadata.get("help", "") for f in fields(RunConfig) if f.name == name)
