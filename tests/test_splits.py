"""Data splits as registered components: iid, dirichlet, shards beside the paper's noniid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedpoison import RunConfig, registry
from fedpoison.data.partition import noniid_partition
from fedpoison.errors import ConfigError
from fedpoison.experiments.spec import parse_spec

SRC = Path(__file__).resolve().parents[1] / "src"
SPLITS = {"noniid": {"p": 0.5}, "iid": {}, "dirichlet": {"alpha": 0.5},
          "shards": {"per_worker": 2}}


def _labels(n: int = 30000, classes: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(classes, (n,), generator=torch.Generator().manual_seed(seed))


def _split(name: str, labels: torch.Tensor, m: int, seed: int, **options: object):
    spec = registry.get("split", name)
    return spec.impl(labels, m, 10, torch.Generator().manual_seed(seed),
                     **{**SPLITS[name], **options})


def _label_counts(owner: torch.Tensor, labels: torch.Tensor, m: int) -> torch.Tensor:
    counts = torch.zeros(m, 10, dtype=torch.float64)
    counts.index_put_((owner, labels), torch.ones(labels.numel(), dtype=torch.float64),
                      accumulate=True)
    return counts


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_every_example_held_once_and_seeded(name: str) -> None:
    labels = _labels(6000)
    part = _split(name, labels, 37, seed=1)
    held = torch.cat([part.indices[i, : part.counts[i]] for i in range(37)])
    assert torch.equal(held.sort()[0], torch.arange(6000))  # each example exactly once
    assert part.owner.min() >= 0 and part.owner.max() < 37
    for i in range(37):
        assert bool((part.owner[part.indices[i, : part.counts[i]]] == i).all())
    assert torch.equal(_split(name, labels, 37, seed=1).owner, part.owner)
    assert not torch.equal(_split(name, labels, 37, seed=2).owner, part.owner)


def test_noniid_split_is_the_papers_partition() -> None:
    """The registered default split is the same draw as before it was a component."""
    labels = _labels()
    a = _split("noniid", labels, 100, seed=3, p=0.3)
    b = noniid_partition(labels, 100, 0.3, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a.owner, b.owner)


def test_iid_equal_sizes_and_global_label_shares() -> None:
    labels = _labels()
    part = _split("iid", labels, 100, seed=0)
    assert int(part.counts.max() - part.counts.min()) == 0  # 30000 / 100
    shares = _label_counts(part.owner, labels, 100) / 300
    prior = torch.bincount(labels, minlength=10).double() / labels.numel()
    # binomial spread of 300 draws only: sd sqrt(0.09 / 300) ≈ 0.017
    assert float((shares - prior).abs().max()) < 0.1
    assert float(shares.var(0).mean()) < 2 * 0.09 / 300


def test_shards_deal_few_labels_per_worker() -> None:
    labels = _labels()
    part = _split("shards", labels, 100, seed=0)  # 200 shards of 150
    assert set(part.counts.tolist()) == {300}
    labels_held = (_label_counts(part.owner, labels, 100) > 0).sum(1)
    assert int(labels_held.max()) <= 4  # two shards, each across at most one label boundary
    assert float(labels_held.double().mean()) < 2.3
    five = _split("shards", labels, 100, seed=0, per_worker=5)
    assert float((_label_counts(five.owner, labels, 100) > 0).sum(1).double().mean()) > 4


@pytest.mark.parametrize("alpha", [0.1, 1.0, 10.0])
def test_dirichlet_label_shares_follow_alpha(alpha: float) -> None:
    """Worker label shares q ~ Dir(α · prior): mean = prior, variance = prior(1 − prior)/(α + 1)
    (Hsu et al. 2019), up to the sampling noise of ~150 examples per worker."""
    labels = _labels()
    m = 200
    part = _split("dirichlet", labels, m, seed=0, alpha=alpha)
    counts = _label_counts(part.owner, labels, m)
    shares = counts / counts.sum(1, keepdim=True).clamp_min(1)
    prior = torch.bincount(labels, minlength=10).double() / labels.numel()
    theory = prior * (1 - prior) / (alpha + 1)
    ratio = float((shares.var(0) / theory).mean())
    assert 0.75 < ratio < 1.3, ratio
    assert float((shares.mean(0) - prior).abs().max()) < 0.05 + 0.03 / alpha**0.5


def test_config_cli_and_sweep_take_splits(tmp_path: Path) -> None:
    cfg = RunConfig(split="dirichlet", split_options={"alpha": "0.5"}).resolve()
    assert cfg.split_options == {"alpha": 0.5}
    assert {"split", "split_options"} <= set(cfg.to_dict())
    # the default split keeps the config form stores had before splits were components
    d = RunConfig(noniid=0.3).resolve().to_dict()
    assert d["noniid"] == 0.3 and "split" not in d and "split_options" not in d
    assert RunConfig.from_dict(d).resolve() == RunConfig(split_options={"p": 0.3}).resolve()
    with pytest.raises(ConfigError) as e:
        RunConfig(split="dirichlet", split_options={"alpha": 0}).resolve()
    assert e.value.field == "split-opt" and "option alpha" in e.value.message
    assert "> 0" in e.value.message
    with pytest.raises(ConfigError, match="not of the selected"):
        RunConfig.from_dict({"split": "iid", "noniid": 0.3})
    with pytest.raises(ConfigError, match="unknown split 'dirichlett'"):
        RunConfig(split="dirichlett").resolve()
    # fewer workers than classes: the noniid split refuses, the iid split does not
    with pytest.raises(ConfigError, match="at least one worker per class"):
        RunConfig(workers=5, compromised=1).resolve()
    RunConfig(workers=5, compromised=1, split="iid").resolve()
    spec = parse_spec({"name": "alphas", "base": {"split": "dirichlet"},
                       "grid": {"split_options.alpha": [0.1, 1.0, 10.0]}}).effective()
    plan = spec.plan()
    assert [p.config.split_options for p in plan] == [{"alpha": a} for a in (0.1, 1.0, 10.0)]
    assert len({p.key for p in plan}) == 3


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "fedpoison", *args], capture_output=True,
                          text=True, env=env)


def test_cli_split_flags() -> None:
    common = ["run", "--dataset", "breast-cancer", "--workers", "10", "--compromised", "2",
              "--iterations", "2", "--json"]
    ok = _cli(*common, "--split", "dirichlet", "--split-opt", "alpha=0.5")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["config"]["split_options"] == {"alpha": 0.5}
    bad = _cli(*common, "--split", "shards", "--split-opt", "per_worker=0")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--split-opt: split shards, option per_worker" in bad.stderr and "≥ 1" in bad.stderr
    many = _cli(*common, "--split", "shards", "--split-opt", "per_worker=100")
    assert many.returncode == 2 and "more than the 455 training examples" in many.stderr
    listing = _cli("list", "splits")
    assert all(f"  {name} — " in listing.stdout for name in SPLITS)
