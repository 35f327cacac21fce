"""Warm-up EMA decay and the in-place EMA update."""

from __future__ import annotations

import pytest
import torch

from rtdmd.functional.ema import ema_update_, ema_warmup_decay


def test_warmup_decay_schedule() -> None:
    assert ema_warmup_decay(0) == pytest.approx(0.1)
    assert ema_warmup_decay(1) == pytest.approx(2 / 11)
    assert ema_warmup_decay(10) == pytest.approx(11 / 20)
    assert ema_warmup_decay(79) == pytest.approx(80 / 89)
    assert ema_warmup_decay(80) == pytest.approx(0.9)   # 81 / 90 reaches the cap
    assert ema_warmup_decay(10_000) == 0.9
    assert ema_warmup_decay(500, max_decay=0.99) == pytest.approx(501 / 510)
    assert ema_warmup_decay(10_000, max_decay=0.99) == 0.99
    values = [ema_warmup_decay(s) for s in range(200)]
    assert values == sorted(values)
    with pytest.raises(ValueError):
        ema_warmup_decay(-1)


def test_update_matches_closed_form_in_place() -> None:
    gen = torch.Generator().manual_seed(0)
    ema = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    params = [torch.randn(3, 4, generator=gen, requires_grad=True),
              torch.randn(5, generator=gen, requires_grad=True)]
    before = [e.clone() for e in ema]
    storage = [e.data_ptr() for e in ema]
    ema_update_(ema, params, 0.75)
    for e, b, p, ptr in zip(ema, before, params, storage, strict=True):
        torch.testing.assert_close(e, 0.75 * b + 0.25 * p.detach())
        assert e.data_ptr() == ptr and not e.requires_grad
    # decay 1 keeps the EMA, decay 0 copies the parameters.
    kept = [e.clone() for e in ema]
    ema_update_(ema, params, 1.0)
    assert all(torch.equal(e, k) for e, k in zip(ema, kept, strict=True))
    ema_update_(ema, params, 0.0)
    assert all(torch.equal(e, p.detach()) for e, p in zip(ema, params, strict=True))


def test_repeated_updates_converge_geometrically() -> None:
    ema = [torch.zeros(6, dtype=torch.float64)]
    target = torch.linspace(-1, 1, 6, dtype=torch.float64)
    decay, n = 0.9, 25
    for _ in range(n):
        ema_update_(ema, [target], decay)
    # ema_n - p = decay^n (ema_0 - p).
    torch.testing.assert_close(ema[0] - target, decay**n * (0 - target), rtol=1e-12, atol=1e-15)


def test_mixed_precision_and_errors() -> None:
    ema = [torch.zeros(4)]
    ema_update_(ema, [torch.ones(4, dtype=torch.bfloat16)], 0.5)
    assert ema[0].dtype == torch.float32
    torch.testing.assert_close(ema[0], torch.full((4,), 0.5))
    with pytest.raises(ValueError):
        ema_update_([torch.zeros(1)], [torch.zeros(1), torch.zeros(1)], 0.5)
    with pytest.raises(ValueError):
        ema_update_([torch.zeros(1)], [torch.zeros(1)], 1.5)
    ema_update_([], [], 0.5)  # nothing to do
