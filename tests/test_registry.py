"""The open core: registration, options in the config, server context, provenance, plugins."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import fedpoison
from fedpoison import Option, RunConfig, registry
from fedpoison.errors import ConfigError, RegistryError
from fedpoison.experiments.spec import parse_spec
from fedpoison.experiments.store import ResultStore
from fedpoison.experiments.sweep import plan_jobs

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


@pytest.fixture
def clean_registry() -> Iterator[list[tuple[str, str]]]:
    """Registrations a test makes are undone afterwards (list (kind, name) to remove)."""
    made: list[tuple[str, str]] = []
    yield made
    for kind, name in made:
        registry.REGISTRY.remove(kind, name)


def _toy(name: str, made: list[tuple[str, str]], n: int = 400, d: int = 6) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long()
    fedpoison.register_dataset(name, train=(x[: n - 100], y[: n - 100]),
                               test=(x[n - 100 :], y[n - 100 :]))
    made.append(("dataset", name))


SMALL = {"workers": 12, "compromised": 2, "iterations": 6, "eval_every": 3}


# ------------------------------------------------------------------------ registration
def test_rule_registered_from_outside_runs_with_its_options(clean_registry: list) -> None:
    _toy("toy-a", clean_registry)
    seen: list[float] = []

    @fedpoison.register_rule("scaled-median", reference="test",
                             options=[Option("scale", 1.0, "factor", low=0.0)])
    def scaled_median(W: torch.Tensor, f: int, *, scale: float) -> torch.Tensor:
        seen.append(scale)
        return W.median(dim=0).values * scale

    clean_registry.append(("rule", "scaled-median"))
    cfg = RunConfig(dataset="toy-a", rule="scaled-median", rule_options={"scale": "0.5"},
                    **SMALL).resolve()
    assert cfg.rule_options == {"scale": 0.5}  # converted to the option's type once
    fedpoison.run(cfg)
    assert seen == [0.5] * 6
    with pytest.raises(ConfigError, match=r"rule scaled-median has no option 'scal'"):
        RunConfig(dataset="toy-a", rule="scaled-median", rule_options={"scal": 1}).resolve()
    with pytest.raises(ConfigError, match=r"option scale: must be a number ≥ 0, got -1"):
        RunConfig(dataset="toy-a", rule="scaled-median", rule_options={"scale": -1}).resolve()
    with pytest.raises(RegistryError, match="already registered"):
        fedpoison.register_rule("scaled-median", scaled_median)
    assert "scaled-median" in json.dumps(registry.catalog(["rule"]))


def test_bad_registrations_are_refused() -> None:
    with pytest.raises(RegistryError, match="reserved"):
        fedpoison.register_rule("none", lambda W, f: W[0])
    with pytest.raises(RegistryError, match="non-empty word"):
        fedpoison.register_rule("two words", lambda W, f: W[0])
    with pytest.raises(RegistryError, match="unknown keyword 'knowledge'"):
        fedpoison.register_rule("x-rule", lambda W, f: W[0], knowledge=("full",))
    with pytest.raises(RegistryError, match="num_classes"):
        fedpoison.register_dataset("x-data", lambda **kw: None, input_shape=(3,))
    with pytest.raises(RegistryError, match="default"):
        Option("k", 1, "bad default", low=2)
    assert ("rule", "x-rule") not in registry.REGISTRY


def test_preaggregator_changes_what_the_rule_sees(clean_registry: list) -> None:
    _toy("toy-b", clean_registry)
    shapes: list[tuple[int, int]] = []

    def output(m: int, f: int, s: int) -> tuple[int, int]:
        return -(-m // s), f

    @fedpoison.register_preaggregator("pair-means", reference="test", output=output,
                                      options=[Option("s", 2, "rows per bucket", low=1)])
    def pair_means(W: torch.Tensor, f: int, *, s: int) -> torch.Tensor:
        shapes.append(tuple(W.shape))
        return torch.stack([c.mean(0) for c in W.split(s)])

    clean_registry.append(("preaggregator", "pair-means"))

    @fedpoison.register_rule("count-rows", reference="test")
    def count_rows(W: torch.Tensor, f: int) -> torch.Tensor:
        shapes.append(tuple(W.shape))
        return W.mean(0)

    clean_registry.append(("rule", "count-rows"))
    fedpoison.run(RunConfig(dataset="toy-b", rule="count-rows", preaggregators=["pair-means:s=3"],
                            **SMALL))
    assert shapes[:2] == [(12, 7 * 2), (4, 7 * 2)]  # LR on 6 features, 2 classes: d = 14
    # the rule's precondition is checked on the rows it will get: Krum needs 4 > 2f + 2
    with pytest.raises(ConfigError, match=r"krum.*m=4, f=2.*after pair-means"):
        RunConfig(dataset="toy-b", rule="krum", preaggregators=["pair-means:s=3"],
                  **SMALL).resolve()


def test_stateful_rule_gets_context_and_state_does_not_leak(clean_registry: list) -> None:
    _toy("toy-c", clean_registry)
    log: list[tuple[int, int]] = []

    @fedpoison.register_rule("counting", reference="test", needs=("previous", "state"),
                             stateful=True)
    def counting(W: torch.Tensor, f: int, *, ctx: object) -> torch.Tensor:
        ctx.state["calls"] = ctx.state.get("calls", 0) + 1  # type: ignore[attr-defined]
        log.append((ctx.iteration, ctx.state["calls"]))  # type: ignore[attr-defined]
        assert ctx.previous.shape == W.shape[1:]  # type: ignore[attr-defined]
        return W.mean(0)

    clean_registry.append(("rule", "counting"))
    cfg = RunConfig(dataset="toy-c", rule="counting", **SMALL)
    a = fedpoison.run(cfg)
    assert log == [(t, t) for t in range(1, 7)]
    b = fedpoison.run(cfg)  # a second run starts from empty state
    assert log[6:] == [(t, t) for t in range(1, 7)]
    assert a.curve == b.curve


def test_attack_knowledge_is_enforced_and_target_rule_bound(clean_registry: list) -> None:
    _toy("toy-d", clean_registry)
    seen: list[tuple[bool, str | None]] = []

    @fedpoison.register_attack("probe", reference="test", target="option",
                               knowledge=("full", "partial"))
    def probe(ctx: object) -> torch.Tensor:
        seen.append((ctx.benign is None, getattr(ctx.target, "name", None)))  # type: ignore
        return ctx.compromised.clone()  # type: ignore[attr-defined]

    clean_registry.append(("attack", "probe"))
    base = {"dataset": "toy-d", "rule": "median", "attack": "probe", **SMALL}
    fedpoison.run(RunConfig(**{**base, "iterations": 1}, knowledge="partial"))
    fedpoison.run(RunConfig(**{**base, "iterations": 1}, knowledge="full",
                            attack_options={"target_rule": "trimmed-mean"}))
    assert seen == [(True, "median"), (False, "trimmed-mean")]
    cfg = RunConfig(**base).resolve()
    assert cfg.attack_options == {"target_rule": "median"}  # resolved to the server's rule

    @fedpoison.register_attack("full-only", reference="test", knowledge=("full",))
    def full_only(ctx: object) -> torch.Tensor:
        return ctx.compromised  # type: ignore[attr-defined]

    clean_registry.append(("attack", "full-only"))
    with pytest.raises(ConfigError, match="attack 'full-only' supports full; got 'partial'"):
        RunConfig(**{**base, "attack": "full-only"}, knowledge="partial").resolve()


def test_defense_from_outside(clean_registry: list) -> None:
    _toy("toy-e", clean_registry)
    dropped: list[int] = []

    @fedpoison.register_defense("drop-first", reference="test", needs_validation=False,
                                options=[Option("n", 1, "rows to drop", low=0)])
    def drop_first(ctx: object, *, n: int) -> torch.Tensor:
        dropped.append(ctx.W.shape[0])  # type: ignore[attr-defined]
        return torch.arange(n)

    clean_registry.append(("defense", "drop-first"))
    fedpoison.run(RunConfig(dataset="toy-e", rule="mean", defense="drop-first",
                            defense_options={"n": 3}, **SMALL))
    assert dropped == [12] * 6


# ------------------------------------------------------------------------- datasets
def test_dataset_content_hash_is_part_of_the_key(clean_registry: list) -> None:
    _toy("toy-f", clean_registry)
    key = RunConfig(dataset="toy-f", **SMALL).config_hash()
    assert key == RunConfig(dataset="toy-f", **SMALL).config_hash()
    registry.REGISTRY.remove("dataset", "toy-f")
    g = torch.Generator().manual_seed(1)  # other data under the same name
    x, y = torch.randn(400, 6, generator=g), torch.randint(0, 2, (400,), generator=g)
    fedpoison.register_dataset("toy-f", train=(x[:300], y[:300]), test=(x[300:], y[300:]))
    assert RunConfig(dataset="toy-f", **SMALL).config_hash() != key


def test_torch_dataset_registers(clean_registry: list) -> None:
    class Pairs(torch.utils.data.Dataset):
        def __init__(self, n: int, seed: int) -> None:
            g = torch.Generator().manual_seed(seed)
            self.x = torch.rand(n, 1, 4, 4, generator=g)
            self.y = torch.randint(0, 3, (n,), generator=g)

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return self.x[i], int(self.y[i])

    fedpoison.register_dataset("pairs", train=Pairs(90, 0), test=Pairs(30, 1), num_classes=3)
    clean_registry.append(("dataset", "pairs"))
    spec = registry.get("dataset", "pairs")
    assert spec.num_classes == 3 and spec.input_shape == (1, 4, 4) and spec.fingerprint
    r = fedpoison.run(RunConfig(dataset="pairs", workers=6, compromised=1, iterations=2,
                                eval_every=1))
    assert 0 <= r.final_error <= 1


def test_config_rejections_up_front() -> None:
    with pytest.raises(ConfigError, match=r"'cnn' takes image inputs; dataset 'breast-cancer'"):
        RunConfig(dataset="breast-cancer", model="cnn").resolve()
    with pytest.raises(ConfigError, match=r"at least one worker per class.*10 classes"):
        RunConfig(workers=8, compromised=1).resolve()
    # resolved and validated once: this config used to fail only at the end of the run
    cfg = RunConfig(dataset="breast-cancer", workers=20, compromised=10, sample=1).resolve()
    assert cfg.f == 0 and cfg.resolve() is cfg
    assert cfg.config_hash() == RunConfig.from_dict(cfg.to_dict()).config_hash()


def test_aliases_and_nested_options_are_one_config() -> None:
    a = RunConfig.from_dict({"rule": "trimmed-mean", "beta": 15, "attack": "krum",
                             "epsilon": 0.1})
    b = RunConfig(rule="trimmed-mean", rule_options={"beta": 15}, attack="krum",
                  attack_options={"epsilon": 0.1})
    c = RunConfig.from_dict({"rule": "trimmed-mean", "rule_options.beta": 15,
                             "attack": "krum", "attack_options.epsilon": 0.1})
    assert a == b == c
    with pytest.raises(ConfigError, match="option of rule trimmed-mean, not of the selected"):
        RunConfig.from_dict({"rule": "median", "beta": 15})
    with pytest.raises(ConfigError, match="unknown config field"):
        RunConfig.from_dict({"rulez": "median"})


# ------------------------------------------------------------------ every component runs
def _attack_cases() -> list[tuple[str, str | None]]:
    out = []
    for spec in registry.specs("attack"):
        for knowledge in spec.knowledge or (None,):
            out.append((spec.name, knowledge))
    return out


@pytest.mark.parametrize(("attack", "knowledge"), _attack_cases())
def test_every_registered_attack_runs_in_the_simulation(attack: str, knowledge: str | None,
                                                        clean_registry: list) -> None:
    """Each attack, with its default options (back-gradient poisoning with a tiny budget of
    steps), runs three iterations against each paper rule it can."""
    _toy("toy-g", clean_registry, n=600, d=5)
    options = ({"inner_steps": 2, "outer_steps": 1, "warm_steps": 2}
               if attack == "bga" else {})
    ran = 0
    for rule in ("mean", "median", "krum"):
        cfg = RunConfig(dataset="toy-g", rule=rule, attack=attack, knowledge=knowledge,
                        attack_options=options, workers=12, compromised=2, iterations=3,
                        eval_every=3)
        try:
            cfg.resolve()
        except ConfigError as e:  # an attack tailored to some rules rejects the others
            assert e.field == "attack" and registry.get("attack", attack).check is not None
            continue
        r = fedpoison.run(cfg)
        assert 0.0 <= r.final_error <= 1.0
        ran += 1
    assert ran >= 2


# ----------------------------------------------------------------------- the adapter
def test_module_adapter_matches_the_hand_written_cnn() -> None:
    from fedpoison.models.cnn import CNN
    from fedpoison.models.functional import ModuleModel

    cnn = CNN((1, 12, 12), 4)
    adapter = ModuleModel(cnn.torch_module, 4)
    assert adapter.layout.dim == cnn.dim
    assert [s.name for s in adapter.layout] == [s.name for s in cnn.layout]
    g = torch.Generator().manual_seed(0)
    k, B = 3, 5
    W = cnn.init(g).expand(k, -1) + 0.01 * torch.randn(k, cnn.dim, generator=g)
    x = torch.rand(k, B, 1, 12, 12, generator=g)
    y = torch.randint(0, 4, (k, B), generator=g)
    mask = torch.ones(k, B, dtype=torch.bool)
    mask[1, 3:] = False  # a worker holding fewer examples than the batch
    torch.testing.assert_close(adapter.batched_grad(W, x, y, mask),
                               cnn.batched_grad(W, x, y, mask), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(adapter.logits(W, x[0]), cnn.logits(W, x[0]),
                               rtol=1e-4, atol=1e-5)


def test_module_adapter_refuses_running_statistics(clean_registry: list) -> None:
    @fedpoison.register_model("bn-net", reference="test", inputs=("image",))
    def bn_net(ds: object) -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(),
                             nn.LazyLinear(2))

    clean_registry.append(("model", "bn-net"))
    from fedpoison.data import Dataset
    from fedpoison.models import build_model

    ds = Dataset("x", torch.rand(4, 1, 5, 5), torch.zeros(4, dtype=torch.int64),
                 torch.rand(2, 1, 5, 5), torch.zeros(2, dtype=torch.int64), 2)
    with pytest.raises(ConfigError, match="BatchNorm with running statistics"):
        build_model("bn-net", ds)


def test_module_model_trains_and_inits_reproducibly(clean_registry: list) -> None:
    _toy("toy-h", clean_registry)

    @fedpoison.register_model("small-mlp", reference="test", inputs=("tabular",))
    def small_mlp(ds: object) -> nn.Module:
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))

    clean_registry.append(("model", "small-mlp"))
    cfg = RunConfig(dataset="toy-h", model="small-mlp", iterations=30, **{
        k: v for k, v in SMALL.items() if k != "iterations"})
    a, b = fedpoison.run(cfg), fedpoison.run(cfg)
    assert a.curve == b.curve and a.final_error < 0.3
    assert torch.rand(1).shape == (1,)  # the global RNG still works (forked, not consumed)


# ------------------------------------------------------------------------- provenance
def test_comments_and_docstrings_do_not_change_the_fingerprint() -> None:
    from fedpoison.provenance import normalized_source

    a = "def f(x):\n    '''doc'''\n    return x + 1  # add\n"
    b = "def f(x):\n    # another comment\n    '''other doc'''\n\n    return x + 1\n"
    c = "def f(x):\n    return x + 2\n"
    assert normalized_source(a) == normalized_source(b) != normalized_source(c)


def test_editing_a_user_rule_recomputes_its_runs(tmp_path: Path) -> None:
    """A rule in a user module: same code → stored runs reused; a comment edit → reused;
    a code edit → recomputed (the old key no longer matches)."""
    module = tmp_path / "user_rule_mod.py"

    def write(body: str) -> None:
        module.write_text(textwrap.dedent(f"""
            import torch
            import fedpoison

            @fedpoison.register_rule("user-rule", reference="test", replace=True)
            def user_rule(W, f):
                {body}
            """))

    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import user_rule_mod
        from fedpoison import RunConfig
        print(RunConfig(dataset="breast-cancer", rule="user-rule", workers=20,
                        compromised=4, iterations=5).config_hash())
        """)

    def key() -> str:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(SRC)}, check=True)
        return out.stdout.strip()

    write("return W.mean(0)")
    first = key()
    write("return W.mean(0)  # a comment does not change the result")
    assert key() == first
    write("return W.median(0).values")
    assert key() != first


# ------------------------------------------------------------------------------- CLI
def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedpoison", *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})},
                          timeout=120)


def test_cli_list_json_version_and_bare_command() -> None:
    out = _cli("list", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) == {"rules", "preaggregators", "attacks", "defenses", "datasets",
                         "models", "splits"}
    tm = next(r for r in data["rules"] if r["name"] == "trimmed-mean")
    assert tm["reference"] and tm["options"][0]["name"] == "beta"
    assert tm["options"][0]["default_text"].startswith("f")
    text = _cli("list", "attacks")
    assert "krum — " in text.stdout and "epsilon (a number ≥ 0; default 0.01)" in text.stdout
    version = _cli("--version")
    assert version.stdout.strip() == f"fedpoison {fedpoison.__version__}"
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from fedpoison.cli import main\n"
         "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
         "print('torch' in sys.modules)"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert probe.stdout.strip().endswith("False")
    bare = _cli()
    assert bare.returncode == 0 and "commands:" in bare.stdout and "list" in bare.stdout


def test_cli_help_explains_every_option() -> None:
    out = _cli("run", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for words in ("--rule RULE the server's aggregation rule", "--rule-opt KEY=VALUE",
                  "--beta VALUE option beta of rule trimmed-mean", "(default: 0.5)",
                  "--epsilon VALUE option epsilon of attack krum"):
        assert words in text, words


def test_cli_options_aliases_and_errors(tmp_path: Path) -> None:
    common = ["run", "--dataset", "breast-cancer", "--workers", "20", "--compromised", "4",
              "--iterations", "3", "--json", "--rule", "trimmed-mean"]
    a = _cli(*common, "--rule-opt", "beta=5")
    b = _cli(*common, "--beta", "5")
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    ra, rb = json.loads(a.stdout), json.loads(b.stdout)
    assert ra["config_hash"] == rb["config_hash"] and ra["config"]["rule_options"] == {"beta": 5}
    bad = _cli(*common, "--rule-opt", "gamma=1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "has no option 'gamma'" in bad.stderr
    bad = _cli(*common[:-2], "--rule", "median", "--beta", "5")
    assert bad.returncode == 2 and "option of rule trimmed-mean" in bad.stderr


# --------------------------------------------------------------------------- plugins
def _plugin(tmp_path: Path, body: str) -> Path:
    """A package with a `fedpoison.plugins` entry point, as pip would install it."""
    site = tmp_path / "site"
    pkg = site / "fp_example_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    dist = site / "fp_example_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fp-example-plugin\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text("[fedpoison.plugins]\nexample = fp_example_plugin\n")
    return site


PLUGIN = """
    import torch
    import fedpoison

    @fedpoison.register_rule("plugin-rule", reference="a plugin's rule")
    def plugin_rule(W, f):
        return W.median(dim=0).values {edit}

    @fedpoison.register_attack("plugin-attack", reference="a plugin's attack",
                               knowledge=("full", "partial"))
    def plugin_attack(ctx):
        return ctx.compromised * 0.0
    """


def test_plugin_components_from_cli_sweep_and_python(tmp_path: Path) -> None:
    site = _plugin(tmp_path, PLUGIN.format(edit=""))
    env = {"PYTHONPATH": f"{site}{os.pathsep}{SRC}"}
    listing = _cli("list", "rules", "attacks", env=env)
    assert "plugin-rule — a plugin's rule" not in listing.stdout  # summary: the docstring
    assert "plugin-rule" in listing.stdout and "plugin-attack" in listing.stdout
    run = _cli("run", "--dataset", "breast-cancer", "--workers", "20", "--compromised", "4",
               "--iterations", "3", "--rule", "plugin-rule", "--attack", "plugin-attack",
               "--json", env=env)
    assert run.returncode == 0, run.stderr
    spec = tmp_path / "sweep.yaml"
    spec.write_text("name: plug\nbase: {dataset: breast-cancer, workers: 20, compromised: 4, "
                    "iterations: 3, rule: plugin-rule}\ngrid:\n  attack: [none, plugin-attack]\n")
    store = tmp_path / "runs.sqlite"
    sweep = _cli("sweep", str(spec), "--store", str(store), "--no-progress", env=env)
    assert sweep.returncode == 0, sweep.stderr
    assert "2 runs planned, 0 already stored" in sweep.stdout
    again = _cli("sweep", str(spec), "--store", str(store), "--no-progress", env=env)
    assert "2 already stored" in again.stdout
    python = subprocess.run(
        [sys.executable, "-c", "import fedpoison; r = fedpoison.run(fedpoison.RunConfig("
         "dataset='breast-cancer', workers=20, compromised=4, iterations=3, "
         "rule='plugin-rule', attack='plugin-attack')); print(r.final_error)"],
        capture_output=True, text=True, env={**os.environ, **env})
    assert python.returncode == 0, python.stderr
    # editing the plugin's rule makes the store recompute its runs
    (site / "fp_example_plugin" / "__init__.py").write_text(
        textwrap.dedent(PLUGIN.format(edit="* 1.0")))
    edited = _cli("sweep", str(spec), "--store", str(store), "--no-progress", env=env)
    assert "2 runs planned, 0 already stored" in edited.stdout, edited.stdout


def test_broken_plugin_warns_and_the_tool_goes_on(tmp_path: Path) -> None:
    site = _plugin(tmp_path, "raise RuntimeError('broken on purpose')\n")
    out = _cli("list", "rules", env={"PYTHONPATH": f"{site}{os.pathsep}{SRC}"})
    assert out.returncode == 0 and "krum" in out.stdout
    assert "plugin 'example'" in out.stderr and "broken on purpose" in out.stderr


# ------------------------------------------------------------------------- the shape
def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (also lazily, inside functions:
    a cycle through a lazy import is still a cycle), except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.dump(node.test) for n in ast.walk(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out & modules


def test_no_import_cycles_between_subpackages() -> None:
    """experiments ↔ report and executors ↔ ray_executor were cycles; none may return."""
    pkg = SRC / "fedpoison"
    modules = {".".join(("fedpoison", *p.relative_to(pkg).with_suffix("").parts))
               .removesuffix(".__init__"): p for p in pkg.rglob("*.py")}
    graph = {name: _imports(path, set(modules)) - {name, "fedpoison"}
             for name, path in modules.items() if name != "fedpoison"}

    def group(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[:2])

    sub = {}
    for m, deps in graph.items():
        sub.setdefault(group(m), set()).update(group(d) for d in deps if group(d) != group(m))
    assert "fedpoison.report" not in sub["fedpoison.experiments"], sub
    assert "fedpoison.experiments.executors" not in graph["fedpoison.experiments.ray_executor"]
    # no cycle at all between subpackages (a, b import each other)
    for a, deps in sub.items():
        for b in deps:
            assert a not in sub.get(b, set()), f"{a} and {b} import each other"


def test_no_component_named_outside_its_module() -> None:
    """Nothing in the engine special-cases a component by name (the hook's rule)."""
    names = {s.name for s in registry.specs()} - {"none"}
    engine = ["config.py", "resolve.py", "simulation.py", "server.py", "adversary.py",
              "tasks.py", "registry.py", "provenance.py", "experiments/spec.py",
              "experiments/sweep.py", "experiments/worker.py", "defenses/rejection.py",
              "defenses/base.py", "cli/run.py", "cli/__init__.py", "cli/listing.py",
              "attacks/direction.py", "attacks/base.py"]
    kinds = r"\w*(?:rule|attack|defense|dataset|model|preagg|split)\w*"
    pattern = re.compile(rf"""\b{kinds}(?:\.name)?\s*(?:==|!=)\s*["']([a-z0-9-]+)["']|"""
                         rf"""\b{kinds}(?:\.name)?\s+in\s*[(\[{{]\s*["']([a-z0-9-]+)["']""")
    for rel in engine:
        text = (SRC / "fedpoison" / rel).read_text()
        for match in pattern.finditer(text):
            word = next(g for g in match.groups() if g)
            assert word not in names, f"{rel} special-cases {word!r}: {match.group(0)}"


# ------------------------------------------------------------------- docs/extending.md
def test_extending_guide_runs(tmp_path: Path) -> None:
    """Every Python block of docs/extending.md runs, in order, in a fresh interpreter; every
    YAML block is a valid sweep spec."""
    text = (ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 8
    script = tmp_path / "guide.py"
    script.write_text("\n".join(blocks))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "clip-mean: test error" in out.stdout and "tiny-mlp under krum" in out.stdout
    import yaml

    for body in re.findall(r"```yaml\n(.*?)```", text, re.S):
        spec = parse_spec(yaml.safe_load(body), "docs/extending.md").effective()
        assert spec.plan()
    with ResultStore(tmp_path / "s.sqlite") as store:
        assert plan_jobs(spec, store)[1] == len(spec.plan())


# ------------------------------------------------------------------ detection metrics
def test_detection_rates_from_defense_drops_and_rule_reports(clean_registry: list) -> None:
    """The server records what a defense dropped and what a rule reports removing
    (ServerContext.remove); the run compares it with the compromised workers it alone
    knows. The rule's rows are mapped back through the defense's drops."""
    _toy("toy-i", clean_registry)
    from fedpoison.simulation import prepare

    cfg = RunConfig(dataset="toy-i", rule="reports-last", defense="drops-first",
                    attack="label-flip", **SMALL)

    @fedpoison.register_defense("drops-first", reference="test", needs_validation=False)
    def drops_first(ctx: object) -> torch.Tensor:
        return torch.tensor([0])

    @fedpoison.register_rule("reports-last", reference="test", needs=("iteration",))
    def reports_last(W: torch.Tensor, f: int, *, ctx: object) -> torch.Tensor:
        ctx.remove(torch.tensor([W.shape[0] - 1]))  # type: ignore[attr-defined]
        return W.mean(0)

    clean_registry += [("defense", "drops-first"), ("rule", "reports-last")]
    setup = prepare(cfg)
    compromised = setup.adversary.is_compromised
    r = fedpoison.run(cfg)
    det = r.diagnostics["detection"]
    first, last = bool(compromised[0]), bool(compromised[-1])
    assert det["n"] == 6
    assert det["tp"] == 6 * (first + last) and det["fp"] == 6 * (2 - first - last)
    assert det["tp"] + det["fn"] == 6 * int(compromised.sum())
    from fedpoison.cli.run import diagnostics_line

    assert "compromised and" in diagnostics_line(r.diagnostics)


def test_code_fingerprint_cache_gives_the_same_answer(tmp_path: Path) -> None:
    """The normalized digests are cached by raw content in the cache folder: a fresh,
    a warm and a corrupt cache give the same fingerprint."""
    script = ("from fedpoison.provenance import code_fingerprint; print(code_fingerprint())")
    env = {**os.environ, "PYTHONPATH": str(SRC), "FEDPOISON_CACHE": str(tmp_path / "c")}

    def fingerprint() -> str:
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env=env, check=True).stdout.strip()

    cold = fingerprint()
    cache = tmp_path / "c" / "provenance-v1.json"
    assert cache.is_file() and len(json.loads(cache.read_text())) > 40
    assert fingerprint() == cold
    cache.write_text("{not json")
    assert fingerprint() == cold
    cache.chmod(0o444)
    (tmp_path / "c").chmod(0o555)  # a cache that cannot be rewritten only costs time
    try:
        cache.write_text("[]") if os.access(cache, os.W_OK) else None
        assert fingerprint() == cold
    finally:
        (tmp_path / "c").chmod(0o755)
