"""One registration mechanism for every kind of component.

A component is a function or factory plus a *spec*: its name, the paper it implements, its
typed options (default, allowed range, one-line meaning) and what it needs from the run.
Built-in components register themselves in their own modules, users register theirs the
same way (decorator or call), and installed packages through the entry-point group
``fedpoison.plugins``. Config validation, the CLI's help, ``fedpoison list`` and sweep files
are all generated from the specs, so nothing outside a component's module names it.

>>> from fedpoison import register_rule, Option
>>> @register_rule("my-median", reference="my note", options=[Option("scale", 1.0, "factor")])
... def my_median(W, f, *, scale):
...     return W.median(0).values * scale
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
import operator
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fedpoison.errors import ConfigError, RegistryError

KINDS = ("rule", "preaggregator", "attack", "defense", "dataset", "model", "split")
"""Component kinds, in the order ``fedpoison list`` prints them."""

PLUGIN_GROUP = "fedpoison.plugins"
"""Entry-point group: each entry point names a module (or a callable) that registers
components when imported (called)."""

# Packages whose modules register the built-in components (imported on first lookup).
_BUILTIN_PACKAGES = (
    "fedpoison.aggregators",
    "fedpoison.attacks",
    "fedpoison.defenses",
    "fedpoison.data",
    "fedpoison.models",
    "fedpoison.splits",
)

_UNSET: Any = object()
F = TypeVar("F", bound=Callable[..., Any])


# =============================================================================== options
@dataclass(frozen=True)
class Option:
    """One typed option of a component.

    ``default`` is used when the config does not set the option; ``None`` means the default
    is derived at run time (``default_text`` says from what, e.g. ``"f"``). ``low``/``high``
    bound numbers (inclusive unless ``low_open``/``high_open``), ``choices`` bound strings.
    ``alias`` is a top-level config key and CLI flag that also sets it (``--beta``).
    The type is taken from ``default`` unless given (``int``, ``float``, ``str``, ``bool``).
    ``previous``, when the default changed, is the default it replaced: the choice set
    ``legacy`` (``--choices legacy``) restores it, so earlier results stay reproducible.
    ``when`` limits an attack option to runs whose resolved fields take the given values
    (``{"knowledge": ("full",)}``); elsewhere it does nothing and is left out of the
    resolved config, so runs that cannot differ share one key.
    """

    name: str
    default: Any
    help: str
    type: type | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    default_text: str | None = None
    alias: str | None = None
    previous: Any = None
    when: Any = None  # Mapping[str, tuple[Any, ...]] | None, stored as sorted pairs

    def __post_init__(self) -> None:
        if self.type is None:
            if self.default is None:
                raise RegistryError(f"option {self.name!r}: give a type when the default is None")
            object.__setattr__(self, "type", type(self.default))
        if self.type not in (int, float, str, bool):
            raise RegistryError(f"option {self.name!r}: type must be int, float, str or bool, "
                                f"got {self.type!r}")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.default is not None:
            try:
                self.check(self.default, "option default")
            except ConfigError as e:
                raise RegistryError(f"option {self.name!r}: its default {self.default!r} is "
                                    f"not {self.allowed()}") from e
        if self.when is not None:
            pairs = self.when.items() if isinstance(self.when, Mapping) else self.when
            object.__setattr__(self, "when", tuple(sorted((str(k), tuple(v)) for k, v in pairs)))
        if self.previous is not None:
            try:
                self.check(self.previous, "option previous default")
            except ConfigError as e:
                raise RegistryError(f"option {self.name!r}: its previous default "
                                    f"{self.previous!r} is not {self.allowed()}") from e

    # -------------------------------------------------------------------- describe
    def allowed(self) -> str:
        """The allowed values in words: 'an integer in [0, 49]', 'one of mean, rule'."""
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.type is bool:
            return "true or false"
        if self.type is str:
            return "a string"
        kind = "an integer" if self.type is int else "a number"
        if self.low is None and self.high is None:
            return kind if self.type is int else "a finite number"
        if self.low is not None and self.high is not None:
            lo = "(" if self.low_open else "["
            hi = ")" if self.high_open else "]"
            return f"{kind} in {lo}{_num(self.low)}, {_num(self.high)}{hi}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '≥'} {_num(self.low)}"
        return f"{kind} {'<' if self.high_open else '≤'} {_num(self.high)}"

    def shown_default(self) -> str:
        if self.default is None:
            return self.default_text or "derived at run time"
        return _num(self.default) if self.type in (int, float) else str(self.default)

    def describe(self) -> str:
        """'beta (an integer ≥ 0; default f): values trimmed per side'."""
        scope = ""
        if self.when:
            scope = "; only with " + ", ".join(f"{k} {'/'.join(map(str, v))}"
                                               for k, v in self.when)
        return (f"{self.name} ({self.allowed()}; default {self.shown_default()}{scope}): "
                f"{self.help}")

    def applies(self, fields: Mapping[str, Any]) -> bool:
        """Whether the option does anything in a run with these resolved ``fields``."""
        return all(fields.get(k) in v for k, v in (self.when or ()))

    # -------------------------------------------------------------------- validate
    def check(self, value: Any, owner: str) -> Any:
        """``value`` converted to the option's type; ``ConfigError`` naming ``owner`` and the
        allowed values otherwise. ``None`` is accepted when the default is derived."""
        where = f"{owner}, option {self.name}"
        if value is None:
            if self.default is None:
                return None
            raise ConfigError(self.name, f"{where}: must be {self.allowed()}, got None")
        t = self.type
        if t is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes",
                                                            "no"):
                return value.lower() in ("true", "1", "yes")
            raise ConfigError(self.name, f"{where}: must be true or false, got {value!r}")
        if t is str:
            if not isinstance(value, str):
                raise ConfigError(self.name, f"{where}: must be {self.allowed()}, got {value!r}")
            out: Any = value
        elif t is int:
            out = _to_int(value)
            if out is None:
                raise ConfigError(self.name, f"{where}: must be {self.allowed()}, got "
                                             f"{_shown(value)}")
        else:
            out = _to_float(value)
            if out is None or not math.isfinite(out):
                raise ConfigError(self.name, f"{where}: must be {self.allowed()}, got "
                                             f"{_shown(value)}")
        if self.choices is not None and out not in self.choices:
            raise ConfigError(self.name, f"{where}: must be {self.allowed()}, got {value!r}")
        if t in (int, float):
            bad_low = self.low is not None and (out <= self.low if self.low_open
                                                 else out < self.low)
            bad_high = self.high is not None and (out >= self.high if self.high_open
                                                  else out > self.high)
            if bad_low or bad_high:
                raise ConfigError(self.name, f"{where}: must be {self.allowed()}, got "
                                             f"{_shown(value)}")
        return out


def _shown(value: Any) -> str:
    """A given value in a message: as typed for command-line strings, else its repr."""
    return value if isinstance(value, str) and value.strip() else repr(value)


def _num(x: Any) -> str:
    """A number as a person writes it: 0, 2, 0.01, 1e-05."""
    return f"{x:g}" if isinstance(x, float) else str(x)


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if hasattr(type(value), "__index__"):  # int and NumPy integers
        return operator.index(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):  # int, float and NumPy scalars
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class Diagnostic:
    """A per-iteration value a component records (``notes``); summarised in the result.

    ``flag`` values are 0/1 (the summary's mean is the fraction of iterations where it held).
    """

    name: str
    meaning: str
    flag: bool = False


# ================================================================================ specs
@dataclass(frozen=True)
class Spec:
    """What every component declares: its kind, name, implementation, paper and options."""

    kind: str
    name: str
    impl: Any
    reference: str
    summary: str
    options: tuple[Option, ...] = ()
    diagnostics: tuple[Diagnostic, ...] = ()

    @property
    def module(self) -> str:
        """The module that defines the implementation (its code is part of a run's key)."""
        return getattr(self.impl, "__module__", "") or ""

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"

    def resolve_options(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Every option with its value: ``given`` checked against the spec, defaults filled
        in (``None`` for a derived default). A wrong name or value raises ``ConfigError``
        whose field is the CLI flag that sets the kind's options (``rule-opt``, ...)."""
        field_ = OPTION_FLAGS.get(self.kind, self.kind)
        given = dict(given or {})
        unknown = [k for k in given if self.option(k) is None]
        if unknown:
            accepted = ", ".join(o.name for o in self.options) or "none"
            raise ConfigError(field_, f"{self.label} has no option {unknown[0]!r}; "
                                      f"its options: {accepted}")
        out = {}
        for o in self.options:
            try:
                out[o.name] = o.check(given[o.name], self.label) if o.name in given else o.default
            except ConfigError as e:
                alias = f" (alias --{o.alias.replace('_', '-')})" if o.alias else ""
                raise ConfigError(field_, e.message + alias) from None
        return out

    def describe(self) -> dict[str, Any]:
        """The JSON form ``fedpoison list --json`` prints."""
        return {
            "name": self.name,
            "reference": self.reference,
            "summary": self.summary,
            "module": self.module,
            "options": [
                {"name": o.name, "default": o.default, "default_text": o.shown_default(),
                 "allowed": o.allowed(), "help": o.help, "alias": o.alias,
                 "type": o.type.__name__ if o.type else None,
                 "choices": list(o.choices) if o.choices is not None else None,
                 "low": o.low, "high": o.high, "previous": o.previous,
                 "when": dict(o.when) if o.when else None}
                for o in self.options
            ],
            **self.requirements(),
        }

    def requirements(self) -> dict[str, Any]:
        """Kind-specific declarations shown by ``fedpoison list``."""
        return {}


#: The CLI flag (without dashes) that sets a kind's options; errors about options name it.
OPTION_FLAGS = {"rule": "rule-opt", "attack": "attack-opt", "defense": "defense-opt",
                "preaggregator": "preagg", "split": "split-opt"}

#: What a rule may ask the server for (its ``needs``); see ``fedpoison.server.ServerContext``.
RULE_NEEDS = ("previous", "state", "server_data", "generator", "iteration")


@dataclass(frozen=True)
class RuleSpec(Spec):
    """An aggregation rule ``rule(W [m, d], f, **options) -> w [d]``.

    ``check(m, f, **options)`` raises ``ValueError`` when the rule cannot aggregate ``m``
    models with ``f`` assumed Byzantine (its precondition), without data. ``needs`` lists the
    server context it wants (:data:`RULE_NEEDS`); a rule with needs is called with ``ctx=``.
    ``stateful`` rules keep ``ctx.state`` across iterations. ``with_and_without(W, f,
    **options) -> (A, B)`` is an optional batched leave-one-out (``B[i]`` = the rule without
    row i) for the defenses that need it; without one, a loop of ``k`` rule calls is used.
    ``selects_row``: the output is always one of the input rows (Krum), so the server can
    record whether it selected a crafted model. ``with_rows_replaced(W, rows, replacement,
    f, **options) -> B`` is an optional batched ``B[i]`` = the rule on ``W`` with row
    ``rows[i]`` replaced by ``replacement[i]`` (a defense's leave-one-out after bucketing).
    """

    check: Callable[..., Any] | None = None
    needs: frozenset[str] = frozenset()
    stateful: bool = False
    with_and_without: Callable[..., Any] | None = None
    with_rows_replaced: Callable[..., Any] | None = None
    selects_row: bool = False

    def requirements(self) -> dict[str, Any]:
        return {"needs": sorted(self.needs), "stateful": self.stateful,
                "precondition": (self.check.__doc__ or "").strip().split("\n")[0]
                if self.check else "", "selects_row": self.selects_row}


@dataclass(frozen=True)
class PreaggregatorSpec(Spec):
    """A step ``preagg(W [m, d], f, **options) -> W' [m', d]`` applied before the rule.

    ``output(m, f, **options) -> (m', f')`` says how many rows it returns and how many of them
    may be Byzantine (for the rule's precondition); ``None`` keeps ``(m, f)``.
    ``leave_one_out(W, f, **options)`` (with ``ctx=`` if it ``needs`` one) may return a
    :class:`fedpoison.server.LeaveOneOut`: its output on ``W`` and, for every row ``i``, how
    that output changes without row ``i`` (one changed or removed output row), so that a
    defense's leave-one-out does not re-run the step ``m`` times; ``None`` (or no hook)
    keeps the generic ``m`` calls.
    """

    output: Callable[..., tuple[int, int]] | None = None
    needs: frozenset[str] = frozenset()
    leave_one_out: Callable[..., Any] | None = None

    def requirements(self) -> dict[str, Any]:
        return {"needs": sorted(self.needs)}


KNOWLEDGE = ("full", "partial")
GOALS = ("directed", "deviation")


@dataclass(frozen=True)
class Backdoor:
    """What a backdoor attack declares (``register_attack(..., backdoor=Backdoor(...))``).

    ``stamp(x, **options) -> x'`` puts the trigger on a batch of inputs ``x`` [n, *shape]
    (images [n, C, H, W] or tabular [n, F]) and returns a new tensor; it is called with all
    the attack's options. ``target`` names the option that holds the target class. ``share``
    names the option with the share of each compromised worker's examples that carry the
    trigger (``None``: all of them). For a model attack with a backdoor, the adversary stamps
    that share of the compromised workers' training examples and relabels them to the
    target (used in the poisoned iterations only, like a label change) before the attack
    crafts from the local models trained on them; a data attack with a backdoor poisons the
    data itself. Either way the run reports the attack success rate: the share of the
    stamped non-target test examples that the global model classifies as the target.
    """

    stamp: Callable[..., Any]
    target: str = "target"
    share: str | None = None


@dataclass(frozen=True)
class AttackSpec(Spec):
    """A model-poisoning attack ``craft(ctx: AttackContext, **options) -> Tensor[c, d]`` or a
    data-poisoning attack ``poison(ctx: DataAttackContext, **options) -> TrainingData``.

    ``target``: ``"option"`` when the attack is crafted against an aggregation rule that is
    a choice (an automatic option ``target_rule``, default the server's rule), a rule name
    when it is crafted against one rule only, ``None`` when it does not assume a rule.
    ``aliases`` maps other names to preset options (``median`` → the trimmed-mean attack
    with ``target_rule: median``). ``check(m, c, f, knowledge, goal, **options)`` rejects a
    combination up front (``ValueError``). ``backdoor`` (a :class:`Backdoor`): the attack
    plants a trigger; the run then stamps the compromised workers' data and reports the
    attack success rate.
    """

    data: bool = False
    knowledge: tuple[str, ...] = KNOWLEDGE
    goals: tuple[str, ...] = ("directed",)
    target: str | None = None
    check: Callable[..., Any] | None = None
    aliases: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    backdoor: Backdoor | None = None

    def __post_init__(self) -> None:
        bd = self.backdoor
        if bd is None:
            return
        if not isinstance(bd, Backdoor) or not callable(bd.stamp):
            raise RegistryError(f"{self.label}: backdoor must be a Backdoor(stamp, target, "
                                "share)")
        for role, name in (("target", bd.target), ("share", bd.share)):
            if name is not None and self.option(name) is None:
                raise RegistryError(f"{self.label}: its backdoor's {role} option {name!r} is "
                                    "not among its options")

    @property
    def type(self) -> str:
        return "data" if self.data else "model"

    def requirements(self) -> dict[str, Any]:
        return {"type": self.type, "knowledge": list(self.knowledge), "goals": list(self.goals),
                "target": self.target, "aliases": sorted(self.aliases),
                "backdoor": self.backdoor is not None}


@dataclass(frozen=True)
class DefenseSpec(Spec):
    """A defense ``reject(ctx: DefenseContext, **options) -> indices of rows to drop``.

    ``check(rule, k, f, **options)`` validates it with the server's bound rule on ``k``
    models (``ValueError``). ``needs_validation``: it evaluates models on the server's
    validation set.
    """

    check: Callable[..., Any] | None = None
    needs_validation: bool = True

    def requirements(self) -> dict[str, Any]:
        return {"needs_validation": self.needs_validation}


@dataclass(frozen=True)
class DatasetSpec(Spec):
    """A dataset: ``loader(seed, home, download, progress) -> Dataset``.

    Static facts let a config be validated without loading it: ``num_classes``,
    ``input_shape`` and ``seeded_split`` (whether the train/test split depends on the run
    seed). ``defaults`` are run defaults for this dataset (e.g. ``batch_size``).
    ``fingerprint`` is a content hash for user datasets (part of every run's key); built-in
    datasets are checksum-verified files and have none.
    """

    num_classes: int = 0
    input_shape: tuple[int, ...] = ()
    seeded_split: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None

    @property
    def image(self) -> bool:
        return len(self.input_shape) == 3

    def requirements(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "input_shape": list(self.input_shape),
                "seeded_split": self.seeded_split, "defaults": dict(self.defaults)}


@dataclass(frozen=True)
class ModelSpec(Spec):
    """A model: ``factory(dataset: DatasetSpec) -> FlatModel`` (or an ``nn.Module``, wrapped
    by the generic ``torch.func`` adapter).

    ``inputs``: the input kinds it accepts (``image`` = [C, H, W], ``tabular`` = [F]).
    ``defaults(dataset) -> dict`` gives run defaults (``lr``, ``iterations``) for a dataset.
    """

    inputs: tuple[str, ...] = ("image", "tabular")
    defaults: Callable[[DatasetSpec], Mapping[str, Any]] | None = None

    def requirements(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs)}

    def check_inputs(self, dataset: str, input_shape: Sequence[int]) -> None:
        """``ConfigError`` unless this model takes the dataset's kind of input."""
        kind = "image" if len(input_shape) == 3 else "tabular"
        if kind not in self.inputs:
            raise ConfigError("model", f"{self.name!r} takes {' or '.join(self.inputs)} "
                                       f"inputs; dataset {dataset!r} has {kind} inputs of "
                                       f"shape {list(input_shape)}")


@dataclass(frozen=True)
class SplitSpec(Spec):
    """A split of the training set over workers:
    ``split(labels [n], num_workers, num_classes, generator, **options) -> Partition``.

    ``check(num_workers, num_classes, **options)`` rejects a combination up front, without
    data (``ValueError``, or a ``ConfigError`` naming the config field to change).
    Every example must be held by exactly one worker, and the split must be a pure
    function of ``generator`` (the run's seeded ``split`` stream).
    """

    check: Callable[..., Any] | None = None

    def requirements(self) -> dict[str, Any]:
        return {"precondition": (self.check.__doc__ or "").strip().split("\n")[0]
                if self.check else ""}


class Bound:
    """A registered component with its (checked) options bound; subclasses add the call."""

    def __init__(self, spec: Any, options: Mapping[str, Any]) -> None:
        self.spec = spec
        self.options = dict(options)

    @property
    def name(self) -> str:
        return str(self.spec.name)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}({opts})"


_SPEC_TYPES: dict[str, type[Spec]] = {
    "rule": RuleSpec,
    "preaggregator": PreaggregatorSpec,
    "attack": AttackSpec,
    "defense": DefenseSpec,
    "dataset": DatasetSpec,
    "model": ModelSpec,
    "split": SplitSpec,
}


# ============================================================================= registry
class Registry:
    """Components by kind and name."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, Spec]] = {k: {} for k in KINDS}
        self._aliases: dict[str, dict[str, tuple[str, Mapping[str, Any]]]] = {
            k: {} for k in KINDS}
        self._loaded = False
        self._loading = False
        self.plugin_errors: list[str] = []

    # ------------------------------------------------------------------ registration
    def add(self, spec: Spec, *, replace: bool = False) -> Spec:
        kind = spec.kind
        if kind not in KINDS:
            raise RegistryError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        name = spec.name
        if not isinstance(name, str) or not name or name != name.strip() or " " in name:
            raise RegistryError(f"{kind} name must be a non-empty word, got {name!r}")
        if name == "none":
            raise RegistryError(f"{kind} name 'none' is reserved (it means: no {kind})")
        names = {o.name for o in spec.options}
        if len(names) != len(spec.options):
            raise RegistryError(f"{spec.label}: duplicate option names")
        table = self._items[kind]
        if (name in table or name in self._aliases[kind]) and not replace:
            raise RegistryError(f"{kind} {name!r} is already registered (by "
                                f"{table[name].module if name in table else 'an alias'}); "
                                "pass replace=True to override it")
        table[name] = spec
        if isinstance(spec, AttackSpec):
            for alias, preset in spec.aliases.items():
                self._aliases[kind][alias] = (name, dict(preset))
        return spec

    def remove(self, kind: str, name: str) -> None:
        """Unregister (tests and notebooks that re-register a component)."""
        self._items[kind].pop(name, None)
        for alias, (target, _) in list(self._aliases[kind].items()):
            if target == name:
                del self._aliases[kind][alias]

    # ----------------------------------------------------------------------- lookup
    def ensure_loaded(self) -> None:
        """Import the built-in components and the installed plugins (once)."""
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            for pkg in _BUILTIN_PACKAGES:
                importlib.import_module(pkg)
            self._load_plugins()
            self._loaded = True
        finally:
            self._loading = False

    def _load_plugins(self) -> None:
        from importlib.metadata import entry_points

        for ep in entry_points(group=PLUGIN_GROUP):
            try:
                obj = ep.load()
                if callable(obj) and not isinstance(obj, type(sys)):
                    obj()
            except Exception as e:  # a broken plugin must not break the tool
                msg = f"plugin {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}"
                self.plugin_errors.append(msg)
                print(f"fedpoison: warning: {msg}", file=sys.stderr)

    def names(self, kind: str) -> tuple[str, ...]:
        self.ensure_loaded()
        return tuple(self._items[kind])

    def specs(self, kind: str) -> tuple[Spec, ...]:
        self.ensure_loaded()
        return tuple(self._items[kind].values())

    def canonical(self, kind: str, name: str) -> tuple[str, Mapping[str, Any]]:
        """``(registered name, preset options)`` of ``name`` or of an alias of it."""
        self.ensure_loaded()
        if name in self._items[kind]:
            return name, {}
        if name in self._aliases[kind]:
            return self._aliases[kind][name]
        raise self.unknown(kind, name)

    def get(self, kind: str, name: str) -> Any:
        """The spec of ``kind`` ``name`` (aliases resolve to their component)."""
        return self._items[kind][self.canonical(kind, name)[0]]

    def unknown(self, kind: str, name: Any) -> ConfigError:
        allowed = [*self._items[kind], *self._aliases[kind]]
        hint = ""
        if isinstance(name, str):
            spelled = name.strip().lower().replace("_", "-").replace(" ", "-")
            if spelled in allowed and spelled != name:
                hint = f" (did you mean {spelled!r}?)"
        none = "none, " if kind in ("attack", "defense") else ""
        return ConfigError(kind, f"unknown {kind} {name!r}{hint}; allowed: {none}"
                                 f"{', '.join(allowed)}")

    def __contains__(self, item: tuple[str, str]) -> bool:
        kind, name = item
        self.ensure_loaded()
        return name in self._items[kind] or name in self._aliases[kind]

    def __iter__(self) -> Iterator[Spec]:
        self.ensure_loaded()
        for kind in KINDS:
            yield from self._items[kind].values()

    def aliases(self, kind: str) -> dict[str, str]:
        """Component aliases of ``kind``: alias → registered name."""
        self.ensure_loaded()
        return {alias: target for alias, (target, _) in self._aliases[kind].items()}

    def aliases_of_options(self, kind: str) -> dict[str, list[tuple[str, str]]]:
        """Top-level option aliases: alias → [(component, option)] for ``kind``."""
        out: dict[str, list[tuple[str, str]]] = {}
        for spec in self.specs(kind):
            for o in spec.options:
                if o.alias:
                    out.setdefault(o.alias, []).append((spec.name, o.name))
        return out


REGISTRY = Registry()
"""The process-wide registry every ``register_*`` function writes into."""


def _register(kind: str, name: str, fn: Any, fields: dict[str, Any],
              replace: bool) -> Any:
    spec_type = _SPEC_TYPES[kind]
    options = tuple(fields.pop("options", ()) or ())
    diagnostics = tuple(fields.pop("diagnostics", ()) or ())
    if "needs" in fields:
        fields["needs"] = frozenset(fields["needs"])
        bad = sorted(set(fields["needs"]) - set(RULE_NEEDS))
        if bad:
            raise RegistryError(f"{kind} {name}: unknown needs {bad}; allowed: "
                                f"{', '.join(RULE_NEEDS)}")
    if kind == "dataset" and "fingerprint" not in fields:
        n = fields.get("num_classes")
        shape = fields.get("input_shape")
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise RegistryError(f"register_dataset {name}: num_classes must be an integer >= 2")
        if not shape or not all(isinstance(v, int) and v >= 1 for v in shape):
            raise RegistryError(f"register_dataset {name}: input_shape must be a tuple of "
                                "positive integers, e.g. (1, 28, 28) or (30,)")
        fields["input_shape"] = tuple(shape)
    known = {f.name for f in dataclasses.fields(spec_type)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise RegistryError(f"register_{kind}: unknown keyword {unknown[0]!r}")
    doc = (getattr(fn, "__doc__", None) or "").strip()
    summary = fields.pop("summary", None) or (doc.split("\n\n")[0].replace("\n", " ")
                                              if doc else "")
    reference = fields.pop("reference", "")
    spec = spec_type(kind=kind, name=name, impl=fn, reference=reference, summary=summary,
                     options=options, diagnostics=diagnostics, **fields)
    REGISTRY.add(spec, replace=replace)
    return fn


def _registrar(kind: str) -> Callable[..., Any]:
    def register(name: str, fn: Any = None, *, replace: bool = False, **fields: Any) -> Any:
        if fn is None:
            def decorator(f: F) -> F:
                _register(kind, name, f, dict(fields), replace)
                return f

            return decorator
        return _register(kind, name, fn, dict(fields), replace)

    register.__name__ = f"register_{kind}"
    register.__doc__ = (
        f"Register a {kind}: ``register_{kind}(name, fn, **spec)`` or as a decorator "
        f"``@register_{kind}(name, **spec)``. Spec fields: {_SPEC_TYPES[kind].__doc__}"
    )
    return register


register_rule = _registrar("rule")
register_preaggregator = _registrar("preaggregator")
register_attack = _registrar("attack")
register_defense = _registrar("defense")
register_model = _registrar("model")
register_split = _registrar("split")
register_dataset = _registrar("dataset")
"""Register a dataset loader ``loader(seed, home, download, progress) -> Dataset`` with its
static ``num_classes`` and ``input_shape``. ``fedpoison.register_dataset`` also takes data
held in memory (``train=``, ``test=``; :mod:`fedpoison.data.custom`)."""


def import_submodules(package: str, path: Iterable[str]) -> None:
    """Import every module of a component package (sorted by name), so that a component in a
    new file registers itself without any other file naming it."""
    import pkgutil

    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda i: i.name):
        importlib.import_module(f"{package}.{info.name}")


def get(kind: str, name: str) -> Any:
    """The spec of component ``name`` of ``kind`` (``ConfigError`` listing the allowed)."""
    if kind not in KINDS:
        raise RegistryError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
    return REGISTRY.get(kind, name)


def names(kind: str) -> tuple[str, ...]:
    """Registered names of ``kind`` (aliases not included)."""
    return REGISTRY.names(kind)


def specs(kind: str | None = None) -> tuple[Spec, ...]:
    """Registered specs of ``kind`` (all kinds when ``None``), in registration order."""
    if kind is None:
        return tuple(REGISTRY)
    return REGISTRY.specs(kind)


def catalog(kinds: Iterable[str] = KINDS) -> dict[str, list[dict[str, Any]]]:
    """``{kind: [spec.describe(), ...]}``: what ``fedpoison list --json`` prints."""
    return {kind: [s.describe() for s in REGISTRY.specs(kind)] for kind in kinds}


def option_table(specs_: Sequence[Spec]) -> list[str]:
    """One line per option of each spec (for help texts)."""
    return [f"{s.name}.{o.describe()}" for s in specs_ for o in s.options]
