"""Sign flipping: each compromised worker sends its own update, negated and scaled."""

from __future__ import annotations

import pytest
import torch

from attack_helpers import craft, hostile, loops_outside, make_context, synthetic
from fedpoison.attacks import sign_flip

M, C, D = 30, 6, 200


def context(w_re: torch.Tensor, W: torch.Tensor, *, knowledge: str = "full",
            benign: torch.Tensor | None = None, seed: int = 1, **options: object):
    return make_context(w_re, W, rule="sign-flip", c=C, knowledge=knowledge, benign=benign,
                        seed=seed, **options)


@pytest.mark.parametrize("scale", [1.0, 4.0, 0.0])
@pytest.mark.parametrize("knowledge", ["full", "partial"])
def test_each_row_is_its_own_update_negated(scale: float, knowledge: str) -> None:
    w_re, W = synthetic(0, M, D)
    X = craft("sign-flip", context(w_re, W, knowledge=knowledge, scale=scale))
    own = W[:C].double() - w_re.double()
    torch.testing.assert_close(X.double() - w_re.double(), -scale * own, rtol=1e-5, atol=1e-6)
    assert X.dtype == torch.float32 and X.shape == (C, D)


def test_never_reads_benign_rows() -> None:
    w_re, W = synthetic(1, M, D)
    base = craft("sign-flip", context(w_re, W))
    for B in [*hostile(W[C:]), torch.full((M - C, D), torch.nan)]:
        assert torch.equal(craft("sign-flip", context(w_re, W, benign=B)), base)
    assert torch.equal(craft("sign-flip", context(w_re, W, knowledge="partial")), base)


def test_same_seed_same_rows() -> None:
    w_re, W = synthetic(2, M, D)
    assert torch.equal(craft("sign-flip", context(w_re, W, seed=5)),
                       craft("sign-flip", context(w_re, W, seed=5)))


def test_vectorized() -> None:
    assert loops_outside(sign_flip.__file__, set()) == []
