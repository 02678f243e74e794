"""Resolving a RunConfig: defaults from the component specs, every value validated once.

Nothing here names a component: the dataset's spec gives its class count, input shape and
defaults, the model's spec the inputs it accepts and its defaults, each rule, attack,
defense and pre-aggregator its options and preconditions (:mod:`fedpoison.registry`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from fedpoison import registry
from fedpoison.errors import ConfigError
from fedpoison.registry import GOALS, KNOWLEDGE

DEVICES = ("auto", "cpu", "cuda")
#: Which workers are compromised (``RunConfig.compromised_choice``; docs/choices.md).
COMPROMISED_CHOICES = ("random", "first")

#: Config fields that take one of a fixed set of values: the alternatives an ablation runs.
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "compromised_choice": COMPROMISED_CHOICES,
    "knowledge": KNOWLEDGE,
    "goal": GOALS,
    "device": DEVICES,
}

#: Config fields that hold a component's options, by component kind.
OPTION_FIELDS: dict[str, str] = {
    "rule": "rule_options",
    "attack": "attack_options",
    "defense": "defense_options",
    "split": "split_options",
}

#: Largest number of simulated workers: a worker costs a few bytes of bookkeeping, but the
#: partition and the per-iteration matrices are indexed with int64 and held in memory.
MAX_WORKERS = 10_000_000

DEFAULT_LR = 0.1
DEFAULT_BATCH = 32
DEFAULT_ITERATIONS = 2000  # neural networks (Section 4.1); a model spec may say otherwise


# ============================================================================ normalize
def normalize(d: Mapping[str, Any], config_type: Any) -> dict[str, Any]:
    """Config fields from a mapping with dotted option keys and option aliases.

    ``{"rule": "trimmed-mean", "beta": 20}`` and ``{"rule_options.beta": 20}`` both give
    ``rule_options={"beta": 20}``. An alias applies to the selected component of its kind
    only; naming an option the selected component does not have is an error.
    """
    if not isinstance(d, Mapping):
        raise ConfigError("config", f"must be a mapping, got {type(d).__name__}")
    defaults = {f.name: f.default for f in dataclasses.fields(config_type)}
    known = set(defaults)
    out: dict[str, Any] = {}
    dotted: list[tuple[str, str, Any]] = []
    aliases: list[tuple[str, Any]] = []
    for key, value in d.items():
        key = str(key)
        if key in known:
            out[key] = value
        elif "." in key:
            head, _, opt = key.partition(".")
            if head not in OPTION_FIELDS.values():
                raise ConfigError(key, f"unknown config field; dotted keys set an option: "
                                       f"{', '.join(f'{v}.NAME' for v in OPTION_FIELDS.values())}")
            dotted.append((head, opt, value))
        else:
            aliases.append((key, value))
    for head, opt, value in dotted:
        current = dict(out.get(head) or {})
        current[opt] = value
        out[head] = current
    for key, value in aliases:
        kind, option = _alias_target(key, out, defaults)
        head = OPTION_FIELDS[kind]
        current = dict(out.get(head) or {})
        if option in current and current[option] != value:
            raise ConfigError(key, f"sets {head}.{option} = {value!r}, which is also set to "
                                   f"{current[option]!r}")
        current[option] = value
        out[head] = current
    return out


def _alias_target(key: str, fields_: Mapping[str, Any], defaults: Mapping[str, Any]
                  ) -> tuple[str, str]:
    """Which option of which selected component the alias ``key`` sets."""
    declared: list[str] = []
    for kind in OPTION_FIELDS:
        table = registry.REGISTRY.aliases_of_options(kind)
        if key not in table:
            continue
        selected = fields_.get(kind, defaults[kind])
        for comp, option in table[key]:
            declared.append(f"{kind} {comp}")
            try:
                if registry.REGISTRY.canonical(kind, str(selected))[0] == comp:
                    return kind, option
            except ConfigError:
                continue
    if declared:
        raise ConfigError(key, f"is an option of {' and '.join(declared)}, not of the "
                               "selected components")
    known = ", ".join(sorted(defaults))
    raise ConfigError(key, f"unknown config field; known: {known}")


# ============================================================================== resolve
def resolve_config(cfg: Any) -> Any:
    """Fill in every default and validate (see :meth:`RunConfig.resolve`)."""
    _check_scalars(cfg)
    ds = registry.get("dataset", cfg.dataset)
    model = registry.get("model", cfg.model)
    model.check_inputs(ds.name, ds.input_shape)
    split_name, split_options = _resolve_split(cfg, ds)
    model_defaults = dict(model.defaults(ds) if model.defaults else {})
    lr = cfg.lr if cfg.lr is not None else float(model_defaults.get("lr", DEFAULT_LR))
    batch = cfg.batch_size if cfg.batch_size is not None else int(
        ds.defaults.get("batch_size", DEFAULT_BATCH))
    iterations = cfg.iterations if cfg.iterations is not None else int(
        model_defaults.get("iterations", DEFAULT_ITERATIONS))
    k = cfg.per_iteration
    if cfg.f is None:
        f = cfg.compromised if k == cfg.workers else math.ceil(cfg.compromised * k / cfg.workers)
        f = min(f, k - 1)
    else:
        f = check_int("f", cfg.f, 0, k - 1, "less than the models aggregated per iteration")

    rule = registry.get("rule", cfg.rule)
    rule_options = rule.resolve_options(cfg.rule_options)
    preaggs = []
    m_rule, f_rule = k, f
    for name, given in cfg.preaggregators:
        spec = registry.get("preaggregator", name)
        opts = spec.resolve_options(given)
        if spec.output is not None:
            try:
                m_rule, f_rule = spec.output(m_rule, f_rule, **opts)
            except ValueError as e:
                raise ConfigError("preaggregators", f"{spec.name}: {e}") from None
        preaggs.append((spec.name, opts))
    _check_rule(rule, rule_options, m_rule, f_rule, preaggs)

    attack_name, attack_options, knowledge, goal = _resolve_attack(cfg, rule.name, k, f)
    # Which workers are compromised does not matter without an attack: recorded as null.
    choice = None if attack_name == "none" else (cfg.compromised_choice or "random")
    defense_name, defense_options = _resolve_defense(cfg, rule.name, rule_options,
                                                     tuple(preaggs), k, f)
    return dataclasses.replace(
        cfg, dataset=ds.name, model=model.name, rule=rule.name, lr=lr, batch_size=batch,
        iterations=iterations, f=f, momentum=float(cfg.momentum),
        weight_decay=float(cfg.weight_decay), rule_options=rule_options, attack=attack_name,
        compromised_choice=choice,
        attack_options=attack_options, knowledge=knowledge, goal=goal, defense=defense_name,
        defense_options=defense_options, preaggregators=tuple(preaggs), split=split_name,
        split_options=split_options,
    )


def _resolve_split(cfg: Any, ds: registry.DatasetSpec) -> tuple[str, dict[str, Any]]:
    """(name, options) of the split, its precondition checked against the dataset."""
    spec: registry.SplitSpec = registry.get("split", cfg.split)
    options = spec.resolve_options(cfg.split_options)
    if spec.check is not None:
        try:
            spec.check(cfg.workers, ds.num_classes, **options)
        except ConfigError as e:
            raise ConfigError(e.field, f"{e.message} ({spec.label} of dataset {ds.name})"
                              ) from None
        except ValueError as e:
            raise ConfigError("split", f"{spec.label}: {e}") from None
    return spec.name, options


def _check_scalars(cfg: Any) -> None:
    for name in ("dataset", "model", "rule", "attack", "defense", "split"):
        value = getattr(cfg, name)
        if not isinstance(value, str):
            raise ConfigError(name, f"must be a name, got {value!r}")
    check_choice("device", cfg.device, DEVICES)
    if cfg.compromised_choice is not None:
        check_choice("compromised_choice", cfg.compromised_choice, COMPROMISED_CHOICES)
    check_int("workers", cfg.workers, 1, MAX_WORKERS)
    check_int("compromised", cfg.compromised, 0, cfg.workers - 1, "less than workers")
    if cfg.iterations is not None:
        check_int("iterations", cfg.iterations, 1, 10**9)
    if cfg.sample is not None:
        check_int("sample", cfg.sample, 1, cfg.workers, "at most workers")
    check_int("local_rounds", cfg.local_rounds, 1, 10**6)
    if cfg.batch_size is not None:
        check_int("batch_size", cfg.batch_size, 1, 10**7)
    if cfg.lr is not None:
        check_float("lr", cfg.lr, 0.0, None, low_open=True)
    check_float("momentum", cfg.momentum, 0.0, 1.0, high_open=True)
    check_float("weight_decay", cfg.weight_decay, 0.0, None)
    check_int("seed", cfg.seed, 0, 2**63 - 1)
    check_float("poison_fraction", cfg.poison_fraction, 0.0, 1.0)
    check_int("validation_size", cfg.validation_size, 1, 10**9)
    check_int("eval_every", cfg.eval_every, 1, 10**9)
    if cfg.train_subset is not None:
        check_int("train_subset", cfg.train_subset, 1, 10**10)
    for name in ("knowledge", "goal"):
        value = getattr(cfg, name)
        if value is not None:
            check_choice(name, value, KNOWLEDGE if name == "knowledge" else GOALS)


def _check_rule(rule: registry.RuleSpec, options: Mapping[str, Any], m: int, f: int,
                preaggs: list[tuple[str, dict[str, Any]]]) -> None:
    if rule.check is None:
        return
    try:
        rule.check(m, f, **options)
    except ValueError as e:
        after = f" (after {', '.join(n for n, _ in preaggs)})" if preaggs else ""
        raise ConfigError("rule", f"{e}{after}") from None


def _resolve_attack(cfg: Any, server_rule: str, k: int, f: int
                    ) -> tuple[str, dict[str, Any], str | None, str | None]:
    return resolve_attack(cfg.attack, cfg.attack_options, server_rule=server_rule,
                          compromised=cfg.compromised, knowledge=cfg.knowledge, goal=cfg.goal,
                          k=k, f=f)


def resolve_attack(attack: str, attack_options: Mapping[str, Any], *, server_rule: str,
                   compromised: int, knowledge: str | None, goal: str | None, k: int | None,
                   f: int) -> tuple[str, dict[str, Any], str | None, str | None]:
    """(name, options, knowledge, goal) of the attack; 'none' has no options.

    ``k`` is the number of models aggregated per iteration; ``None`` (not known yet, as in
    a Flower deployment before its first round) leaves out the attack's own ``check``."""
    if attack == "none":
        if attack_options:
            raise ConfigError("attack_options", "attack 'none' takes no options")
        return "none", {}, None, None
    name, preset = registry.REGISTRY.canonical("attack", attack)
    spec: registry.AttackSpec = registry.get("attack", name)
    given = dict(preset)
    for key, value in attack_options.items():
        if key in preset and preset[key] != value:
            raise ConfigError("attack_options", f"attack {attack!r} is {name} with "
                                                f"{key}={preset[key]!r}; got {key}={value!r}")
        given[key] = value
    target = None
    if spec.target == "option":
        target = given.pop("target_rule", None)
        if target is None:
            target = server_rule
        target = registry.get("rule", str(target)).name
    options = spec.resolve_options(given)
    if spec.target == "option":
        options["target_rule"] = target
    if compromised == 0:
        raise ConfigError("compromised", f"attack {name!r} needs compromised ≥ 1")
    knowledge = (knowledge or "full") if spec.knowledge else None
    goal = (goal or "directed") if spec.goals else None
    if knowledge is not None and knowledge not in spec.knowledge:
        raise ConfigError("knowledge", f"attack {name!r} supports {', '.join(spec.knowledge)}; "
                                       f"got {knowledge!r}")
    if goal is not None and goal not in spec.goals:
        raise ConfigError("goal", f"attack {name!r} supports goal {', '.join(spec.goals)}; "
                                  f"got {goal!r}")
    if (target is not None and knowledge == "full"
            and "server_data" in registry.get("rule", target).needs):
        # The attacker runs its target rule on the models it sees; a rule that needs the
        # server's own data (FLTrust's root set) cannot be run by the attacker.
        raise ConfigError("attack-opt", f"attack {name!r} crafts against rule {target!r}, "
                                        "which needs the server's own data: set "
                                        "target_rule to another rule, e.g. "
                                        "--attack-opt target_rule=trimmed-mean")
    if spec.check is not None and k is not None:
        try:
            spec.check(m=k, c=compromised, f=f, knowledge=knowledge, goal=goal, **options)
        except ValueError as e:
            raise ConfigError("attack", str(e)) from None
    # Options that do nothing in this run (Option.when) are left out: one key per behaviour.
    fields = {"knowledge": knowledge, "goal": goal}
    options = {key: value for key, value in options.items()
               if (o := spec.option(key)) is None or o.applies(fields)}
    return name, options, knowledge, goal


def _resolve_defense(cfg: Any, rule: str, rule_options: Mapping[str, Any],
                     preaggs: tuple[tuple[str, dict[str, Any]], ...], k: int, f: int
                     ) -> tuple[str, dict[str, Any]]:
    return resolve_defense(cfg.defense, cfg.defense_options, rule, rule_options, preaggs, k, f)


def resolve_defense(defense: str, defense_options: Mapping[str, Any], rule: str,
                    rule_options: Mapping[str, Any],
                    preaggs: tuple[tuple[str, dict[str, Any]], ...], k: int | None, f: int
                    ) -> tuple[str, dict[str, Any]]:
    """(name, options) of the defense; ``k`` ``None`` leaves out its ``check`` (see
    :func:`resolve_attack`)."""
    if defense == "none":
        if defense_options:
            raise ConfigError("defense_options", "defense 'none' takes no options")
        return "none", {}
    spec: registry.DefenseSpec = registry.get("defense", defense)
    options = spec.resolve_options(defense_options)
    if spec.check is not None and k is not None:
        from fedpoison.server import bind_pipeline

        try:
            spec.check(bind_pipeline(rule, rule_options, preaggs), k, f, **options)
        except ValueError as e:
            raise ConfigError("defense", str(e)) from None
    return spec.name, options


def check_int(name: str, value: Any, lo: int, hi: int | None, why: str = "") -> int:
    """``value`` as an int in ``[lo, hi]``, else ``ConfigError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer ≥ {lo}"
        extra = f" ({why})" if why else ""
        raise ConfigError(name, f"must be {rng}{extra}, got {value}")
    return value


def check_float(name: str, value: Any, lo: float, hi: float | None, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float in the range, else ``ConfigError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    bad = value <= lo if low_open else value < lo
    if hi is not None:
        bad = bad or (value >= hi if high_open else value > hi)
    if bad:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        rng = (f"a number in {left}{lo:g}, {hi:g}{right}" if hi is not None
               else f"a number {'>' if low_open else '≥'} {lo:g}")
        raise ConfigError(name, f"must be {rng}, got {value}")
    return float(value)


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(name, f"got {value!r}; allowed: {', '.join(allowed)}")
    return value
