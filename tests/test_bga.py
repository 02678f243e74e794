"""Back-gradient poisoning (Muñoz-González et al. 2017): reversal, gradient, placement, cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fedpoison import registry
from fedpoison.attacks import DataAttackContext, TrainingData, poison_cache
from fedpoison.attacks import bga as B

D64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: thread start-up would dominate (and stall on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


N, FEAT, L, P = 40, 6, 3, 4
T, LR, MOM = 30, 0.5, 0.9


def _problem(seed: int = 0, clean_weight: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, FEAT, generator=g, dtype=D64)
    y = torch.randint(L, (N,), generator=g)
    xv = torch.rand(20, FEAT, generator=g, dtype=D64)
    yv = torch.randint(L, (20,), generator=g)
    xp = torch.rand(P, FEAT, generator=g, dtype=D64)
    yp = torch.randint(L, (P,), generator=g)
    W0 = B.to_fixed(0.3 * torch.randn(FEAT + 1, L, generator=g, dtype=D64))
    problem = B.InnerProblem(x, y, yp, L, clean_weight=clean_weight, dtype=D64)
    problem.set_poison(xp)
    val = (torch.cat([xv, torch.ones(20, 1, dtype=D64)], 1), F.one_hot(yv, L).to(D64))
    return problem, (x, y, xp, yp), val, W0


def _outer_loss(problem: B.InnerProblem, xp: torch.Tensor, val, W0: torch.Tensor) -> float:
    problem.set_poison(xp)
    state = B.train_forward(problem, W0, T, LR, MOM)
    return B._loss_grad(*val, B.from_fixed(state.W, D64))[0]


def test_reverse_pass_recovers_initial_state_bit_for_bit() -> None:
    problem, _, val, W0 = _problem()
    state = B.train_forward(problem, W0, T, LR, MOM)
    assert not torch.equal(state.W, W0)
    _, dA = B._loss_grad(*val, B.from_fixed(state.W, D64))
    bg = B.back_gradient(problem, state, dA, LR, MOM)
    assert bg.inexact == 0
    assert torch.equal(bg.W0, W0)
    assert int(bg.V0.abs().max()) == 0
    torch.testing.assert_close(B.from_fixed(bg.W0, D64), B.from_fixed(W0, D64), rtol=0, atol=0)


def test_back_gradient_equals_autograd_unrolled_gradient() -> None:
    problem, (x, y, xp, yp), val, W0 = _problem()
    state = B.train_forward(problem, W0, T, LR, MOM)
    _, dA = B._loss_grad(*val, B.from_fixed(state.W, D64))
    dx = B.back_gradient(problem, state, dA, LR, MOM).dx

    # Reference: the same T heavy-ball steps in plain float64, differentiated by autograd.
    xr = xp.clone().requires_grad_(True)
    xa = torch.cat([torch.cat([x, xr]), torch.ones(N + P, 1, dtype=D64)], 1)
    onehot = F.one_hot(torch.cat([y, yp]), L).to(D64)
    c = torch.cat([torch.full((N,), 2.0, dtype=D64), torch.ones(P, dtype=D64)])
    c = (c / c.sum())[:, None]
    theta, v = B.from_fixed(W0, D64), torch.zeros(FEAT + 1, L, dtype=D64)
    for _ in range(T):
        grad = xa.T @ (c * (torch.softmax(xa @ theta, 1) - onehot))
        v = MOM * v - LR * grad
        theta = theta + v
    vx, vy = val
    loss = -(torch.log_softmax(vx @ theta, 1) * vy).sum(1).mean()
    (ref,) = torch.autograd.grad(loss, xr)
    torch.testing.assert_close(dx, ref, rtol=1e-8, atol=1e-11)


def test_back_gradient_matches_finite_difference() -> None:
    problem, (_, _, xp, _), val, W0 = _problem(seed=3)
    state = B.train_forward(problem, W0, T, LR, MOM)
    _, dA = B._loss_grad(*val, B.from_fixed(state.W, D64))
    dx = B.back_gradient(problem, state, dA, LR, MOM).dx
    direction = torch.randn(P, FEAT, generator=torch.Generator().manual_seed(9), dtype=D64)
    eps = 1e-5
    fd = (_outer_loss(problem, xp + eps * direction, val, W0)
          - _outer_loss(problem, xp - eps * direction, val, W0)) / (2 * eps)
    assert fd == pytest.approx(float((dx * direction).sum()), rel=1e-5)


def test_hessian_vector_and_mixed_products_match_autograd() -> None:
    problem, _, _, W0 = _problem(seed=5)
    theta = B.from_fixed(W0, D64)
    u = torch.randn(FEAT + 1, L, generator=torch.Generator().manual_seed(2), dtype=D64)
    g, hu, prob_p, js_p = problem.derivatives(theta, u)
    mixed = problem.mixed(theta, u, prob_p, js_p)

    xp = problem.x[N:, :-1].clone().requires_grad_(True)
    th = theta.clone().requires_grad_(True)
    xa = torch.cat([torch.cat([problem.x[:N, :-1], xp]), torch.ones(N + P, 1, dtype=D64)], 1)
    loss = -(problem.weight * torch.log_softmax(xa @ th, 1) * problem.onehot).sum()
    (grad,) = torch.autograd.grad(loss, th, create_graph=True)
    torch.testing.assert_close(g, grad.detach())
    hu_ref, mixed_ref = torch.autograd.grad((grad * u).sum(), (th, xp))
    torch.testing.assert_close(hu, hu_ref)
    torch.testing.assert_close(mixed, mixed_ref)


def test_generate_poison_stays_in_box_and_raises_validation_loss() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(120, 1, 3, 3, generator=g)
    y = (x.reshape(120, -1)[:, :3].argmax(1))  # a learnable 3-class problem
    kwargs = dict(budget=0.1, T=15, step_size=2.0, inner_lr=0.5, warm_steps=50,
                  num_classes=3, dtype=D64)
    losses: list[float] = []
    x_p, y_p = B.generate_poison(x[:80], y[:80], x[80:], y[80:], outer_steps=8,
                                 generator=torch.Generator().manual_seed(0),
                                 progress=lambda s, v: losses.append(v), **kwargs)
    assert x_p.shape == (8, 1, 3, 3) and x_p.dtype == torch.float32
    assert y_p.shape == (8,) and y_p.dtype == torch.int64
    assert float(x_p.min()) >= 0.0 and float(x_p.max()) <= 1.0
    assert losses[7] > losses[0]  # the outer objective went up
    again = B.generate_poison(x[:80], y[:80], x[80:], y[80:], outer_steps=8,
                              generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(x_p, again[0]) and torch.equal(y_p, again[1])


def test_initial_poison_labels() -> None:
    x = torch.rand(50, 4)
    y = torch.arange(50) % 5
    g = torch.Generator().manual_seed(0)
    xp, yp = B.initial_poison(x, y, 10, 5, "flip", g)
    src = [int((x == row).all(1).nonzero()[0]) for row in xp]
    assert torch.equal(yp, 4 - y[src])
    xp, yp = B.initial_poison(x, y, 10, 5, "random", g)
    src = [int((x == row).all(1).nonzero()[0]) for row in xp]
    assert bool((yp != y[src]).all()) and bool(((yp >= 0) & (yp < 5)).all())


def test_divergent_inner_learner_is_reported() -> None:
    problem, _, _, W0 = _problem()
    with pytest.raises(FloatingPointError, match="fixed-point range"):
        B.train_forward(problem, W0, 200, 1e6, MOM)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="momentum"):
        B.BGASettings(momentum=0.123456789).validate()
    with pytest.raises(ValueError, match="init"):
        B.BGASettings(init="zeros").validate()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inner_lr"):
        B.BGASettings(inner_lr=0.0).validate()


def test_placement() -> None:
    compromised = torch.tensor([3, 7, 11, 19])
    g = torch.Generator().manual_seed(0)
    single = B.place_poison(50, compromised, "single-worker", g)
    assert single.unique().numel() == 1 and int(single[0]) in compromised.tolist()
    uniform = B.place_poison(400, compromised, "uniform", g)
    assert bool(torch.isin(uniform, compromised).all())
    counts = torch.bincount(uniform, minlength=20)[compromised]
    assert int(counts.min()) > 60  # every compromised worker gets a share (≈ 100 each)
    with pytest.raises(ValueError, match="placement"):
        B.place_poison(5, compromised, "everywhere", g)  # type: ignore[arg-type]


def _options(**kw: object) -> dict[str, object]:
    """The bga attack's options, with tiny generation settings."""
    return {"budget": 0.05, "placement": "uniform", "inner_steps": 5, "outer_steps": 2,
            "warm_steps": 10, **kw}


def _bga(ctx: DataAttackContext, **kw: object) -> TrainingData:
    return registry.get("attack", "bga").impl(ctx, **_options(**kw))


def _ctx() -> DataAttackContext:
    g = torch.Generator().manual_seed(4)
    x = torch.rand(100, 1, 2, 2, generator=g)
    y = torch.randint(3, (100,), generator=g)
    owner = torch.randint(10, (100,), generator=g)
    return DataAttackContext(TrainingData(x, y, owner), torch.tensor([2, 5, 8]), 3,
                             torch.Generator().manual_seed(1), seed=0, dataset="toy")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable data home and a cache folder, both under tmp_path; the poison folder."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("FEDPOISON_DATA", str(tmp_path / "home"))
    monkeypatch.setenv(poison_cache.ENV_CACHE, str(tmp_path / "cache"))
    return tmp_path / "cache" / "poison"


@pytest.mark.parametrize("placement", ["uniform", "single-worker"])
def test_bga_data_attack_appends_points_to_compromised_workers(cache: Path, placement: str
                                                               ) -> None:
    ctx = _ctx()
    out = _bga(ctx, placement=placement)
    assert out.x.shape == (105, 1, 2, 2) and out.y.shape == (105,) and out.owner.shape == (105,)
    assert torch.equal(out.x[:100], ctx.data.x) and torch.equal(out.owner[:100], ctx.data.owner)
    new_owner = out.owner[100:]
    assert bool(torch.isin(new_owner, ctx.compromised_workers).all())
    if placement == "single-worker":
        assert new_owner.unique().numel() == 1
    assert float(out.x[100:].min()) >= 0 and float(out.x[100:].max()) <= 1


def test_held_out_validation_split_keeps_the_budget(cache: Path) -> None:
    out = _bga(_ctx(), val_fraction=0.3)
    assert out.x.shape[0] == 105  # 5% of all 100 examples, though D_tr holds only 70


def test_cache_hit_is_identical_and_a_parameter_change_misses(cache: Path) -> None:
    calls: list[int] = []

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return torch.rand(3, 4), torch.tensor([0, 1, 2])

    info: dict[str, object] = {}
    first = poison_cache.cached("bga", {"T": 5, "seed": 0}, compute, info=info)
    assert info["hit"] is False
    second = poison_cache.cached("bga", {"T": 5, "seed": 0}, compute, info=info)
    assert info["hit"] is True and len(calls) == 1
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert list(cache.glob("*.tmp")) == []
    poison_cache.cached("bga", {"T": 6, "seed": 0}, compute)
    assert len(calls) == 2

    # Through the attack: same config hits (identical points), another T misses.
    a = _bga(_ctx())
    n_files = len(list(cache.iterdir()))
    b = _bga(_ctx())
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert len(list(cache.iterdir())) == n_files
    _bga(_ctx(), inner_steps=6)
    assert len(list(cache.iterdir())) == n_files + 1


def test_the_cache_is_written_to_the_cache_folder_never_the_data_home(
    cache: Path, tmp_path: Path
) -> None:
    """Issue 15, class 7: the data home is input, even when its permissions allow writing."""
    info: dict[str, object] = {}
    _bga(_ctx())
    poison_cache.cached("bga", {"k": 1}, lambda: (torch.zeros(2, 2), torch.zeros(2)), info=info)
    assert info["path"] == cache / Path(str(info["path"])).name
    assert len(list(cache.glob("bga-*.pt"))) == 2
    assert list((tmp_path / "home").iterdir()) == []


@pytest.mark.parametrize("how", ["mode", "file"])
def test_unwritable_cache_warns_and_computes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "mode":  # a cache marked r-x (read-only even though root could write it)
        folder = tmp_path / "ro-cache"
        folder.mkdir()
        folder.chmod(0o555)
    else:  # a folder cannot be created under a file
        blocker = tmp_path / "ro-cache"
        blocker.write_text("")
        folder = blocker / "cache"
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("FEDPOISON_DATA", str(tmp_path / "home"))
    monkeypatch.setenv(poison_cache.ENV_CACHE, str(folder))
    calls: list[int] = []

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return torch.zeros(2, 2), torch.zeros(2, dtype=torch.int64)

    try:
        for _ in range(2):
            with pytest.warns(RuntimeWarning, match=r"poison cache is off: .*ro-cache"):
                poison_cache.cached("bga", {"k": 1}, compute)
        assert len(calls) == 2  # computed every time, as the warning says
        assert not (tmp_path / "ro-cache" / "poison").exists()
        assert list((tmp_path / "home").iterdir()) == []  # no fallback into the data home
    finally:
        if how == "mode":
            folder.chmod(0o755)
