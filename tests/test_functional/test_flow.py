"""Exact properties of the rectified-flow conventions in ``rtdmd.functional.flow``."""

from __future__ import annotations

import pytest
import torch

from rtdmd.functional.flow import (
    append_dims,
    cfg_combine,
    eps_from_velocity,
    interpolate,
    velocity_from_eps,
    velocity_from_x0,
    velocity_target,
    x0_from_velocity,
)

B, SHAPE = 3, (3, 2, 4, 5)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def test_append_dims_shapes() -> None:
    s = torch.arange(B, dtype=torch.float64)
    assert append_dims(s, 4).shape == (B, 1, 1, 1)
    assert append_dims(0.5, 4) == 0.5
    zero_d = torch.tensor(0.5)
    assert append_dims(zero_d, 4) is zero_d
    with pytest.raises(ValueError):
        append_dims(torch.zeros(2, 2), 1)


def test_interpolate_endpoints_and_formula() -> None:
    x0, eps = _rand(*SHAPE, seed=0), _rand(*SHAPE, seed=1)
    assert torch.equal(interpolate(x0, eps, 0.0), x0)
    assert torch.equal(interpolate(x0, eps, 1.0), eps)
    s = 0.3
    assert torch.allclose(interpolate(x0, eps, s), 0.7 * x0 + 0.3 * eps, atol=1e-15)


@pytest.mark.parametrize('sigma', [0.37, torch.tensor([0.1, 0.5, 0.93], dtype=torch.float64)])
def test_conversions_recover_x0_and_eps(sigma: float | torch.Tensor) -> None:
    x0, eps = _rand(*SHAPE, seed=2), _rand(*SHAPE, seed=3)
    x = interpolate(x0, eps, sigma)
    v = velocity_target(x0, eps)
    assert torch.equal(v, eps - x0)
    assert torch.allclose(x0_from_velocity(x, v, sigma), x0, atol=1e-12)
    assert torch.allclose(eps_from_velocity(x, v, sigma), eps, atol=1e-12)
    # The inverse maps give back the velocity from either prediction.
    assert torch.allclose(velocity_from_x0(x, x0, sigma), v, atol=1e-12)
    assert torch.allclose(velocity_from_eps(x, eps, sigma), v, atol=1e-12)


def test_conversions_invert_each_other_for_arbitrary_velocity() -> None:
    x, v = _rand(*SHAPE, seed=4), _rand(*SHAPE, seed=5)
    sigma = torch.tensor([0.2, 0.6, 0.8], dtype=torch.float64)
    x0_hat = x0_from_velocity(x, v, sigma)
    eps_hat = eps_from_velocity(x, v, sigma)
    assert torch.allclose(velocity_from_x0(x, x0_hat, sigma), v, atol=1e-12)
    assert torch.allclose(velocity_from_eps(x, eps_hat, sigma), v, atol=1e-12)
    # x0_hat and eps_hat lie on a straight path through x, with velocity v.
    assert torch.allclose(interpolate(x0_hat, eps_hat, sigma), x, atol=1e-12)
    assert torch.allclose(velocity_target(x0_hat, eps_hat), v, atol=1e-12)


def test_per_sample_sigma_matches_loop() -> None:
    x0, eps, v = _rand(*SHAPE, seed=6), _rand(*SHAPE, seed=7), _rand(*SHAPE, seed=8)
    sigma = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    batched = {
        'interp': interpolate(x0, eps, sigma),
        'x0': x0_from_velocity(x0, v, sigma),
        'eps': eps_from_velocity(x0, v, sigma),
        'v_x0': velocity_from_x0(x0, eps, sigma),
        'v_eps': velocity_from_eps(x0, eps, sigma),
    }
    for b in range(B):
        s = float(sigma[b])
        assert torch.equal(batched['interp'][b], interpolate(x0[b : b + 1], eps[b : b + 1], s)[0])
        assert torch.equal(batched['x0'][b], x0_from_velocity(x0[b : b + 1], v[b : b + 1], s)[0])
        assert torch.equal(batched['eps'][b], eps_from_velocity(x0[b : b + 1], v[b : b + 1], s)[0])
        assert torch.equal(
            batched['v_x0'][b], velocity_from_x0(x0[b : b + 1], eps[b : b + 1], s)[0]
        )
        assert torch.equal(
            batched['v_eps'][b], velocity_from_eps(x0[b : b + 1], eps[b : b + 1], s)[0]
        )


def test_cfg_combine_endpoints_and_linearity() -> None:
    vu, vc = _rand(*SHAPE, seed=9), _rand(*SHAPE, seed=10)
    # vu + 1 * (vc - vu) rounds, so scale 1 equals cond up to float64 rounding only.
    assert torch.allclose(cfg_combine(vu, vc, 1.0), vc, rtol=0, atol=1e-14)
    assert torch.equal(cfg_combine(vu, vc, 0.0), vu)
    w1, w2, a = 3.5, -1.25, 0.3
    lhs = cfg_combine(vu, vc, a * w1 + (1 - a) * w2)
    rhs = a * cfg_combine(vu, vc, w1) + (1 - a) * cfg_combine(vu, vc, w2)
    assert torch.allclose(lhs, rhs, atol=1e-12)
    assert torch.allclose(cfg_combine(vu, vc, 4.0), vu + 4.0 * (vc - vu), atol=1e-12)


def test_cfg_combine_per_sample_scale() -> None:
    vu, vc = _rand(*SHAPE, seed=11), _rand(*SHAPE, seed=12)
    w = torch.tensor([1.0, 0.0, 4.5], dtype=torch.float64)
    out = cfg_combine(vu, vc, w)
    assert torch.allclose(out[0], vc[0], rtol=0, atol=1e-14)
    assert torch.equal(out[1], vu[1])
    assert torch.equal(out[2], cfg_combine(vu[2:], vc[2:], 4.5)[0])
