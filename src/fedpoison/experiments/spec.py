"""Sweep specs: a base config, axes of values, and a number of trials, validated up front.

One YAML format covers three kinds of spec (``kind`` is inferred when absent):

``sweep``
    ``base`` (config fields) and ``grid`` (axis name → values). An axis is a list of values of
    the config field it names (``compromised: [5, 10, 20]``), a list whose items are mappings
    of several fields set together (``size: [{workers: 50, compromised: 10}, ...]``), or a
    mapping label → fields (``series: {none: {attack: none}, partial: {...}}``). The sweep is
    the product of its axes.
``table``
    The paper-table presets: ``rows`` and ``columns`` (label → fields), ``row_key`` and
    ``column_key`` naming them, ``paper`` values per cell. ``{row}`` in a column's value is the
    row's label.
``figure``
    ``panels`` (panel id → ``title``, ``set`` fields, ``x`` axis and optionally its own
    ``series``), top-level ``series`` (the lines of every panel) and optional ``variants``
    (name → fields, the first is the default: e.g. ``lr`` and ``dnn``).

Common keys: ``name``, ``title``, ``metric`` (``final_error``, ``best_error``,
``final_loss``, or ``final_asr`` / ``max_asr``: the attack success rate of a backdoor attack,
"n/a" for runs without one), ``trials`` (trial t runs with seed t), ``quick`` (overrides for
a reduced run, may hold ``trials``), ``quick_label`` (what a reduced run's cells are,
printed above its table). A string value may name another field or axis in braces:
``attack: "{rule}"`` is the attack crafted for the point's rule.

Choices (``effective(choices=...)``, the CLI's ``--choices``): values applied to every point
on top of the spec, for the readings the paper leaves open. A key is a config field
(``compromised_choice: first``) or an option name, set on each point whose rule, attack or
defense declares that option (``direction: mean`` reaches the Krum and trimmed-mean attacks
and leaves ``gaussian`` alone); ``legacy: true`` gives every component option that changed
its default (``Option.previous``) its previous default where the point does not set it.
An ablation (``fedpoison reproduce NAME --ablation OPTION``) runs the spec once per value.

Component options: ``rule_options``, ``attack_options`` and ``defense_options`` take a
mapping (``attack_options: {epsilon: 0.1}``, which replaces the whole mapping), a dotted key
sets one option (``attack_options.epsilon: 0.1``) and may be an axis
(``grid: {rule_options.beta: [20, 25]}``); the aliases components declare (``beta``,
``epsilon``, ...) work too. ``preaggregators`` takes a list.

Every run of a spec is validated before any starts: an unknown field, a bad value or an
impossible combination raises one :class:`ConfigError` that names the entry.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpoison.config import OPTION_FIELDS as OPTION_FIELD_NAMES
from fedpoison.config import RunConfig
from fedpoison.errors import ConfigError

if TYPE_CHECKING:  # PyYAML is imported where a spec or a value is read: `run` never needs it
    import yaml

KINDS = ("sweep", "table", "figure")
METRICS = ("final_error", "best_error", "final_loss", "final_asr", "max_asr")
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
#: Fields whose value is a mapping of a component's options.
OPTION_FIELDS = tuple(OPTION_FIELD_NAMES.values())
SPEC_KEYS = (
    "name", "title", "kind", "description", "metric", "trials", "quick", "quick_label", "base",
    "grid", "rows", "columns", "row_key", "column_key", "paper", "series", "panels", "variants",
)
#: The choice that restores every option's previous default (``Option.previous``).
LEGACY = "legacy"
PANEL_KEYS = ("title", "set", "x", "series")
X_KEYS = ("field", "values", "title", "scale")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_-]*)\}")


@dataclass(frozen=True)
class Item:
    """One value of an axis: its label, its plot coordinate and the fields it sets."""

    label: str
    x: Any
    overrides: Mapping[str, Any]


@dataclass(frozen=True)
class Axis:
    """A named list of items; a block runs the product of its axes."""

    name: str
    items: tuple[Item, ...]
    title: str = ""
    scale: str = "linear"


@dataclass(frozen=True)
class Block:
    """A grid: the product of ``axes`` over the base config plus ``overrides``.

    A sweep or table has one block (id ``""``); a figure has one per panel.
    """

    id: str
    title: str
    overrides: Mapping[str, Any]
    axes: tuple[Axis, ...]


@dataclass(frozen=True)
class Point:
    """One grid point of a block: the labels it has on each axis and its config (no seed)."""

    block: str
    labels: tuple[tuple[str, str], ...]
    x: tuple[tuple[str, Any], ...]
    config: Mapping[str, Any]

    def label(self, axis: str) -> str:
        return dict(self.labels)[axis]

    def coordinate(self, axis: str) -> Any:
        return dict(self.x)[axis]

    def describe(self) -> str:
        parts = [f"panel {self.block}"] if self.block else []
        parts += [f"{a}={v}" for a, v in self.labels]
        return ", ".join(parts)


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan: point ``point`` (index into ``points()``), trial, config, key."""

    point: int
    trial: int
    config: RunConfig
    key: str


@dataclass(frozen=True)
class SweepSpec:
    """A parsed spec. ``effective()`` folds ``--quick``, ``--trials`` and a variant in."""

    name: str
    title: str
    kind: str
    metric: str
    trials: int
    base: Mapping[str, Any]
    blocks: tuple[Block, ...]
    quick: Mapping[str, Any] = field(default_factory=dict)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    paper: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    source: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    declared_base: Mapping[str, Any] | None = None  # ``base`` as written, before effective()

    # ------------------------------------------------------------------ options
    @property
    def choices(self) -> dict[str, Any]:
        """The choices applied to every point (see the module docstring); empty by default."""
        return dict(self.options.get("choices") or {})

    @property
    def record_name(self) -> str:
        """The name this spec is recorded under in a store (variant, choices and ``-quick``
        added)."""
        name = self.name
        variant = self.options.get("variant")
        if variant and self.variants and variant != next(iter(self.variants)):
            name += f"-{variant}"
        if self.choices:
            name += "-" + choices_text(self.choices)
        return name + ("-quick" if self.options.get("quick") else "")

    def effective(
        self, *, trials: int | None = None, quick: bool = False, variant: str | None = None,
        choices: Mapping[str, Any] | None = None,
    ) -> SweepSpec:
        """The spec as it will run: quick overrides and the variant merged into ``base``,
        ``choices`` applied to every point.

        Always starts from the spec as written, so it may be called on its own result.
        """
        declared = self.base if self.declared_base is None else self.declared_base
        base = dict(declared)
        if variant is not None and variant not in self.variants:
            allowed = ", ".join(self.variants) or "none (this spec has no variants)"
            raise ConfigError("variant", f"unknown variant {variant!r} of {self.name}; "
                                         f"allowed: {allowed}")
        chosen = variant if variant is not None else next(iter(self.variants), None)
        if chosen is not None:
            base.update(self.variants[chosen])
        n = int(self.raw.get("trials", self.trials)) if self.raw else self.trials
        if quick:
            base.update({k: v for k, v in self.quick.items() if k != "trials"})
            n = int(self.quick.get("trials", n))
        if trials is not None:
            n = trials
        _check_trials(n, self._where("trials"))
        picked = check_choices(choices or {}, self._where("choices"))
        options: dict[str, Any] = {"trials": n, "quick": quick, "variant": chosen}
        if picked:
            options["choices"] = picked
        title = str(self.raw.get("title", self.name)) if self.raw else self.title
        if chosen is not None and chosen != next(iter(self.variants)):
            title += f" [{chosen}]"
        if picked:
            title += f" [choices: {choices_text(picked)}]"
        return dataclasses.replace(self, base=base, trials=n, options=options,
                                   declared_base=declared, title=title)

    def quick_note(self) -> str:
        """'iterations=100, ...': what ``--quick`` changed, for labelling reduced runs."""
        return ", ".join(f"{k}={v}" for k, v in self.quick.items() if k != "trials")

    @property
    def quick_label(self) -> str:
        """What the cells of a reduced run are (the spec's ``quick_label``; may be empty)."""
        return str(self.raw.get("quick_label", "")) if self.raw else ""

    # ---------------------------------------------------------------- expansion
    def points(self) -> list[Point]:
        """Every grid point of every block, in order (placeholders filled in, choices
        applied)."""
        out = []
        choices = self.choices
        used: set[str] = set()
        for block in self.blocks:
            for combo in itertools.product(*(axis.items for axis in block.axes)):
                labels = tuple((a.name, it.label) for a, it in zip(block.axes, combo, strict=True))
                xs = tuple((a.name, it.x) for a, it in zip(block.axes, combo, strict=True))
                cfg: dict[str, Any] = {}
                for overrides in (self.base, block.overrides, *(it.overrides for it in combo)):
                    merge(cfg, overrides)
                point = Point(block.id, labels, xs, cfg)
                cfg = self._fill(cfg, point)
                if choices:
                    cfg = apply_choices(cfg, choices, used)
                out.append(dataclasses.replace(point, config=cfg))
        unused = [k for k in choices if k != LEGACY and k not in used]
        if unused:
            raise ConfigError("choices", f"{unused[0]!r} applies to no run of {self.name}: no "
                                         "rule, attack or defense of its points declares it")
        return out

    def plan(self) -> list[PlannedRun]:
        """Every (point, trial) run, each validated; ConfigError names the first bad entry.

        Runs are ordered trial-major (all points of trial 0 first), so that a partial sweep
        already covers every point.
        """
        points = self.points()
        out: list[PlannedRun] = []
        bad: list[tuple[Point, int, ConfigError]] = []
        for trial in range(self.trials):
            for i, point in enumerate(points):
                try:
                    cfg = RunConfig.from_dict({**point.config, "seed": trial})
                    key = cfg.config_hash()  # resolves, which validates every field
                except ConfigError as e:
                    bad.append((point, trial, e))
                    continue
                except TypeError as e:  # e.g. a list where a scalar belongs
                    bad.append((point, trial, ConfigError("config", str(e))))
                    continue
                out.append(PlannedRun(i, trial, cfg, key))
            if bad:
                break
        if bad:
            point, trial, e = bad[0]
            more = f"; {len(bad) - 1} more invalid entries" if len(bad) > 1 else ""
            raise ConfigError(
                e.field, f"{e.message} ({self._where()} entry {point.describe()}, "
                         f"trial {trial}{more})"
            )
        return out

    def _fill(self, cfg: dict[str, Any], point: Point) -> dict[str, Any]:
        """Replace ``{name}`` in string values (also inside option mappings) by the point's
        axis label or field value."""
        out = self._fill_flat(cfg, point, cfg)
        for head in OPTION_FIELDS:
            if isinstance(out.get(head), Mapping):
                out[head] = self._fill_flat(dict(out[head]), point, cfg)
        return out

    def _fill_flat(self, values: dict[str, Any], point: Point, cfg: dict[str, Any]
                   ) -> dict[str, Any]:
        labels = dict(point.labels)
        out = dict(values)
        for k, v in values.items():
            if not isinstance(v, str) or "{" not in v:
                continue

            def sub(m: re.Match[str], k: str = k, v: str = v) -> str:
                name = m.group(1)
                if name in labels:
                    return labels[name]
                value = cfg.get(name)
                if name != k and value is not None and "{" not in str(value):
                    return str(value)
                raise ConfigError(k, f"placeholder {{{name}}} in {v!r} names no axis or set "
                                     f"field ({self._where()} entry {point.describe()})")

            out[k] = _PLACEHOLDER.sub(sub, v)
        return out

    def _where(self, key: str = "") -> str:
        src = f"sweep {self.name!r}" + (f" ({self.source})" if self.source else "")
        return src + (f", key {key!r}" if key else ",")

    # --------------------------------------------------------------- structure
    @property
    def row_axis(self) -> str:
        return self.blocks[0].axes[0].name

    @property
    def column_axis(self) -> str | None:
        axes = self.blocks[0].axes
        return axes[1].name if len(axes) > 1 else None


# ====================================================================== choices
def choice_options(name: str) -> list[Any]:
    """The registered options called ``name`` (of rules, attacks and defenses)."""
    from fedpoison import registry

    found = []
    for kind in OPTION_FIELD_NAMES:
        for comp in registry.names(kind):
            found += [o for o in registry.get(kind, comp).options if o.name == name]
    return found


def alternatives(name: str) -> tuple[Any, ...]:
    """Every value an ablation of ``name`` runs: a config field's fixed set of values, or
    the choices of the component options called ``name`` (in declaration order)."""
    from fedpoison.resolve import FIELD_CHOICES

    if name in FIELD_CHOICES:
        return FIELD_CHOICES[name]
    values: list[Any] = []
    for o in choice_options(name):
        values += [c for c in (o.choices or ()) if c not in values]
    if not values:
        known = sorted({*FIELD_CHOICES, *ablatable_options()})
        raise ConfigError("ablation", f"{name!r} has no fixed set of alternatives; ablate one "
                                      f"of: {', '.join(known)}")
    return tuple(values)


def ablatable_options() -> list[str]:
    """Names of component options with a fixed set of choices."""
    from fedpoison import registry

    names: list[str] = []
    for kind in OPTION_FIELD_NAMES:
        for comp in registry.names(kind):
            names += [o.name for o in registry.get(kind, comp).options
                      if o.choices and o.name not in names]
    return names


def default_alternative(name: str) -> Any:
    """The value ``name`` takes when nothing sets it (None when components disagree)."""
    if name in CONFIG_FIELDS:
        return next(f.default for f in dataclasses.fields(RunConfig) if f.name == name)
    defaults = {o.default for o in choice_options(name)}
    return defaults.pop() if len(defaults) == 1 else None


def check_choices(choices: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``choices`` validated: each key ``legacy``, a config field or a component option."""
    if not isinstance(choices, Mapping):
        raise ConfigError("choices", f"must be a mapping of names to values, got {choices!r}")
    out: dict[str, Any] = {}
    for key, value in choices.items():
        key = str(key)
        if key == LEGACY:
            if value not in (True, "true", "1", 1):
                raise ConfigError("choices", f"{where}: legacy takes no value")
            out[key] = True
        elif key in CONFIG_FIELDS:
            if key in ("seed", *OPTION_FIELDS, "preaggregators"):
                raise ConfigError("choices", f"{where}: {key!r} cannot be a choice")
            out[key] = value
        elif choice_options(key):
            if isinstance(value, list | dict):
                raise ConfigError("choices", f"{where}: {key} takes one value, got {value!r}")
            out[key] = value
        else:
            raise ConfigError("choices", f"{where}: unknown choice {key!r}; give a config "
                                         "field, a component option or legacy")
    return out


def parse_choices(text: str | None) -> dict[str, Any]:
    """``"legacy,direction=mean,lr=0.1"`` -> ``{"legacy": True, "direction": "mean",
    "lr": 0.1}``."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq:
            if key != LEGACY:
                raise ConfigError("choices", f"{part!r}: give KEY=VALUE or legacy")
            out[LEGACY] = True
        elif not key or not value.strip():
            raise ConfigError("choices", f"{part!r}: give KEY=VALUE or legacy")
        elif key in CONFIG_FIELDS:
            out[key] = _scalar(value.strip(), part)
        else:
            out[key] = value.strip()  # a component option checks and converts its own
    return out


def _scalar(text: str, part: str) -> Any:
    """A config field's value written on the command line, read as the same value in a
    preset's YAML would be (``lr=0.1`` is the number 0.1, ``f=null`` is None)."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, list | dict):
        raise ConfigError("choices", f"{part!r}: give one value")
    return value


def choices_text(choices: Mapping[str, Any]) -> str:
    """``legacy,direction=mean``: choices as one short name (record names, titles)."""
    return ",".join(k if k == LEGACY else f"{k}={v}" for k, v in choices.items())


def apply_choices(cfg: Mapping[str, Any], choices: Mapping[str, Any],
                  used: set[str] | None = None) -> dict[str, Any]:
    """``cfg`` (one point's fields) with ``choices`` applied; ``used`` collects the keys
    that changed or set something. A named choice overrides what the point sets; ``legacy``
    only fills options the point leaves at their default."""
    from fedpoison import registry

    out = dict(cfg)
    used = set() if used is None else used
    for key, value in choices.items():
        if key in CONFIG_FIELDS:
            out[key] = value
            used.add(key)
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    for kind, head in OPTION_FIELD_NAMES.items():
        name = out.get(kind, defaults.get(kind))
        if not isinstance(name, str) or name == "none":
            continue
        try:
            canonical, preset = registry.REGISTRY.canonical(kind, name)
            spec = registry.get(kind, canonical)
        except ConfigError:
            continue  # an unknown name: plan() reports it
        opts = dict(out.get(head) or {})
        before = dict(opts)
        for o in spec.options:
            if o.name in preset:
                continue
            if o.name in choices:
                opts[o.name] = choices[o.name]
                used.add(o.name)
            elif choices.get(LEGACY) and o.previous is not None and o.name not in before:
                opts[o.name] = o.previous
        if opts != before or head in out:
            out[head] = opts
    return out


# ====================================================================== parsing
def parse_spec(spec: Any, source: str = "") -> SweepSpec:
    """Parse a spec mapping (from YAML); ConfigError names the offending entry."""
    where = f"sweep spec{f' {source}' if source else ''}"
    if not isinstance(spec, Mapping):
        raise ConfigError("spec", f"{where}: must be a mapping, got {type(spec).__name__}")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError("spec", f"{where}: unknown key {unknown[0]!r}; allowed: "
                                  f"{', '.join(SPEC_KEYS)}")
    name = str(spec.get("name") or (Path(source).stem if source else "sweep"))
    where = f"sweep {name!r}" + (f" ({source})" if source else "")
    kind = spec.get("kind") or (
        "figure" if "panels" in spec else "table" if "rows" in spec else "sweep"
    )
    if kind not in KINDS:
        raise ConfigError("kind", f"{where}: got {kind!r}; allowed: {', '.join(KINDS)}")
    metric = spec.get("metric", "final_error")
    if metric not in METRICS:
        raise ConfigError("metric", f"{where}: got {metric!r}; allowed: {', '.join(METRICS)}")
    trials = spec.get("trials", 1)
    _check_trials(trials, f"{where}, key 'trials'")
    base = _fields(spec.get("base") or {}, f"{where}, base")
    quick = spec.get("quick") or {}
    _fields({k: v for k, v in _mapping(quick, f"{where}, quick").items() if k != "trials"},
            f"{where}, quick")
    if "trials" in quick:
        _check_trials(quick["trials"], f"{where}, quick.trials")
    variants = {
        str(k): _fields(v or {}, f"{where}, variant {k!r}")
        for k, v in _mapping(spec.get("variants") or {}, f"{where}, variants").items()
    }
    paper: dict[str, dict[str, float]] = {}
    if kind == "sweep":
        for key in ("rows", "columns", "panels", "series"):
            if key in spec:
                raise ConfigError("spec", f"{where}: key {key!r} belongs to a "
                                          f"{'figure' if key in ('panels', 'series') else 'table'}"
                                          " spec, not a sweep")
        grid = _mapping(spec.get("grid") or {}, f"{where}, grid")
        axes = tuple(_axis(str(k), v, f"{where}, grid axis {k!r}") for k, v in grid.items())
        blocks = (Block("", "", {}, axes),)
        paper = _paper(spec.get("paper"), where)
    elif kind == "table":
        for key in ("rows", "columns"):
            if key not in spec:
                raise ConfigError("spec", f"{where}: a table needs {key!r}")
        row_key = str(spec.get("row_key", "rule"))
        column_key = str(spec.get("column_key", "attack"))
        if row_key == column_key:
            raise ConfigError("column_key", f"{where}: must differ from row_key {row_key!r}")
        rows = _labelled(spec["rows"], f"{where}, rows", {})
        cols = _labelled(spec["columns"], f"{where}, columns", {"row": row_key})
        blocks = (Block("", "", {}, (Axis(row_key, rows), Axis(column_key, cols))),)
        paper = _paper(spec.get("paper"), where)
    else:
        series = spec.get("series")
        panels = _mapping(spec.get("panels") or {}, f"{where}, panels")
        if not panels:
            raise ConfigError("panels", f"{where}: a figure needs at least one panel")
        blocks = tuple(_panel(str(pid), p, series, where) for pid, p in panels.items())
    return SweepSpec(
        name=name, title=str(spec.get("title", name)), kind=kind, metric=metric, trials=trials,
        base=base, blocks=blocks, quick=dict(quick), variants=variants, paper=paper,
        source=source, raw=dict(spec),
    )


def _panel(pid: str, panel: Any, default_series: Any, where: str) -> Block:
    here = f"{where}, panel {pid!r}"
    panel = _mapping(panel, here)
    unknown = [k for k in panel if k not in PANEL_KEYS]
    if unknown:
        raise ConfigError("panels", f"{here}: unknown key {unknown[0]!r}; allowed: "
                                    f"{', '.join(PANEL_KEYS)}")
    x = _mapping(panel.get("x"), f"{here}, x")
    unknown = [k for k in x if k not in X_KEYS]
    if unknown:
        raise ConfigError("x", f"{here}, x: unknown key {unknown[0]!r}; allowed: "
                               f"{', '.join(X_KEYS)}")
    if "field" not in x or "values" not in x:
        raise ConfigError("x", f"{here}, x: needs 'field' and 'values'")
    xfield = str(x["field"])
    _check_key(xfield, f"{here}, x.field")
    scale = x.get("scale", "linear")
    if scale not in ("linear", "log"):
        raise ConfigError("x", f"{here}, x.scale: got {scale!r}; allowed: linear, log")
    x_axis = _axis(xfield, x["values"], f"{here}, x.values")
    if any(xfield not in it.overrides for it in x_axis.items):
        raise ConfigError(xfield, f"{here}, x.values: every mapping item must set {xfield!r}")
    x_axis = dataclasses.replace(x_axis, title=str(x.get("title", xfield)), scale=scale)
    series = panel.get("series", default_series)
    if series is None:
        raise ConfigError("series", f"{here}: needs 'series' (here or at the top level)")
    s_axis = Axis("series", _labelled(series, f"{here}, series", {}))
    overrides = _fields(panel.get("set") or {}, f"{here}, set")
    return Block(pid, str(panel.get("title", pid)), overrides, (x_axis, s_axis))


def _axis(name: str, values: Any, where: str) -> Axis:
    if isinstance(values, Mapping):
        return Axis(name, _labelled(values, where, {}))
    if not isinstance(values, list) or not values:
        raise ConfigError(name, f"{where}: must be a non-empty list or a mapping label → fields")
    items = []
    for v in values:
        if isinstance(v, Mapping):
            fields = _fields(v, f"{where}, item {dict(v)}")
            x = fields.get(name, _compact(fields))
            items.append(Item(str(x), x, fields))
        else:
            try:
                _check_key(name, where)
            except ConfigError:
                raise ConfigError(name, f"unknown config field ({where}); an axis that is not "
                                        "a field needs mapping items (field → value)") from None
            items.append(Item(str(v), v, {name: v}))
    _unique(items, where)
    return Axis(name, tuple(items))


def _labelled(values: Any, where: str, aliases: dict[str, str]) -> tuple[Item, ...]:
    """label → fields mapping; ``{alias}`` placeholders are renamed (``{row}`` → ``{rule}``)."""
    values = _mapping(values, where)
    if not values:
        raise ConfigError("spec", f"{where}: must not be empty")
    items = []
    for label, fields in values.items():
        fields = dict(_fields(fields or {}, f"{where}, {label!r}"))
        for k, v in fields.items():
            if isinstance(v, str):
                for alias, target in aliases.items():
                    v = v.replace("{" + alias + "}", "{" + target + "}")
                fields[k] = v
        items.append(Item(str(label), str(label), fields))
    return tuple(items)


def _check_key(key: str, where: str) -> None:
    """``key`` must be a config field, a dotted option key or a declared option alias."""
    if key in CONFIG_FIELDS:
        return
    head, dot, opt = key.partition(".")
    if dot:
        if head in OPTION_FIELDS and opt:
            return
        raise ConfigError(key, f"unknown config field ({where}); dotted keys set an option: "
                               f"{', '.join(f'{h}.NAME' for h in OPTION_FIELDS)}")
    from fedpoison import registry

    for kind in OPTION_FIELD_NAMES:
        if key in registry.REGISTRY.aliases_of_options(kind):
            return
    raise ConfigError(key, f"unknown config field ({where}); known: "
                           f"{', '.join(sorted(CONFIG_FIELDS))}, dotted option keys "
                           f"({', '.join(f'{h}.NAME' for h in OPTION_FIELDS)}) and option "
                           "aliases (fedpoison list)")


def merge(cfg: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Apply ``overrides`` to ``cfg`` in place: a dotted key sets one option of its mapping,
    a mapping value for an option field replaces the whole mapping, anything else is set."""
    for k, v in overrides.items():
        head, dot, opt = k.partition(".")
        if dot and head in OPTION_FIELDS:
            cfg[head] = {**dict(cfg.get(head) or {}), opt: v}
        elif k in OPTION_FIELDS:
            cfg[k] = dict(v or {})
        else:
            cfg[k] = v


def _fields(d: Any, where: str) -> dict[str, Any]:
    d = _mapping(d, where)
    for k, v in d.items():
        _check_key(str(k), where)
        if k == "seed":
            raise ConfigError("seed", f"set by the trial number, trial t runs with seed t "
                                      f"({where}); use 'trials: N'")
        if k in OPTION_FIELDS:
            if v is not None and not isinstance(v, Mapping):
                raise ConfigError(str(k), f"must be a mapping of option names to values, got "
                                          f"{v!r} ({where})")
            for ov in (v or {}).values():
                if isinstance(ov, list | dict):
                    raise ConfigError(str(k), f"option values must be single values, got "
                                              f"{ov!r} ({where}); put lists of values in the "
                                              "grid with a dotted key")
        elif k == "preaggregators":
            if not isinstance(v, list | str):
                raise ConfigError(str(k), f"must be a list of names or {{name, options}} "
                                          f"({where}), got {v!r}")
        elif isinstance(v, list | dict):
            raise ConfigError(str(k), f"must be a single value, got {v!r} ({where}); "
                                      "put lists of values in the grid")
    return dict(d)


def _mapping(d: Any, where: str) -> dict[str, Any]:
    if not isinstance(d, Mapping):
        raise ConfigError("spec", f"{where}: must be a mapping, got {d!r}")
    return dict(d)


def _paper(paper: Any, where: str) -> dict[str, dict[str, float]]:
    if paper is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for row, cols in _mapping(paper, f"{where}, paper").items():
        out[str(row)] = {}
        for col, v in _mapping(cols, f"{where}, paper.{row}").items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise ConfigError("paper", f"{where}, paper.{row}.{col}: must be a number")
            out[str(row)][str(col)] = v
    return out


def _check_trials(n: Any, where: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError("trials", f"must be an integer >= 1, got {n!r} ({where})")


def _compact(fields: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in fields.items())


def _unique(items: Sequence[Item], where: str) -> None:
    seen: set[str] = set()
    for it in items:
        if it.label in seen:
            raise ConfigError("spec", f"{where}: value {it.label!r} appears twice")
        seen.add(it.label)


# ================================================================ shipped specs
def spec_names() -> list[str]:
    """Names of the specs shipped in ``fedpoison/presets`` (tables and figures)."""
    files = resources.files("fedpoison.presets")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


MAX_SPEC_BYTES = 1 << 20
"""A spec file larger than this (1 MiB) is refused before it is read."""

MAX_SPEC_SIZE = 1_000_000
"""The most nodes plus scalar characters a spec may hold once its YAML aliases are expanded.

An alias may repeat a large anchor, so a few hundred bytes of YAML can expand to billions of
values (an "alias bomb"); everything downstream (validation, the JSON recorded in the store)
walks the expanded spec, so it is measured on the composed YAML before anything is built.
"""


def load_spec(name_or_path: str | Path) -> SweepSpec:
    """A shipped spec by name (``table2a``, ``figure2``) or a YAML file by path."""
    text = str(name_or_path)
    path = Path(text)
    if text in spec_names() and not path.is_file():
        body = resources.files("fedpoison.presets").joinpath(f"{text}.yaml").read_text()
        source = f"preset {text}"
    elif path.is_file():
        body = _read_spec_file(path)
        source = str(path)
    else:
        raise ConfigError("spec", f"no spec file {text!r} and no preset of that name; presets: "
                                  f"{', '.join(spec_names())}")
    return parse_spec(safe_load_yaml(body, source), source)


def _read_spec_file(path: Path) -> str:
    """The text of a spec file: at most :data:`MAX_SPEC_BYTES`, UTF-8, readable."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise ConfigError("spec", f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise ConfigError("spec", f"{path} is larger than {MAX_SPEC_BYTES} bytes; a sweep spec "
                                  "is a short YAML file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("spec", f"{path} is not UTF-8 text (byte {raw[e.start]:#04x} at "
                                  f"offset {e.start}); save it as UTF-8") from None


def safe_load_yaml(body: str, source: str) -> Any:
    """``yaml.safe_load(body)``, refusing a document that expands beyond
    :data:`MAX_SPEC_SIZE` (alias bombs), refers to itself, or nests too deeply."""
    import yaml

    loader = yaml.SafeLoader(body)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError("spec", f"{source}: not valid YAML: {_one_line(str(e))}") from None
    except RecursionError:
        raise ConfigError("spec", f"{source}: nested too deeply to be a sweep spec") from None
    finally:
        loader.dispose()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _check_expanded_size(root: yaml.Node, source: str) -> None:
    """Raise ConfigError when ``root`` expands (aliases repeated) beyond MAX_SPEC_SIZE.

    Aliased nodes are shared in the composed graph, so their expanded size is computed once
    (memoized, iteratively: no recursion limit) and the walk stays linear in the YAML text.
    """
    import yaml

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return []

    size: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            own = 1 + (len(node.value) if isinstance(node, yaml.ScalarNode) else 0)
            size[key] = own + sum(size[id(c)] for c in children(node))
            if size[key] > MAX_SPEC_SIZE:
                raise ConfigError(
                    "spec", f"{source}: expands to more than {MAX_SPEC_SIZE:,} values and "
                    "characters once its YAML aliases (*name) are resolved; a sweep spec is "
                    "far smaller (is it an alias bomb?)")
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise ConfigError("spec", f"{source}: a YAML alias refers to a node that contains "
                                      "it (a recursive structure); a sweep spec cannot")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children(node) if id(c) not in size)
