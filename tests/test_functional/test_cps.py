"""Exact and Monte-Carlo properties of the CPS transition in ``rtdmd.functional.cps``."""

from __future__ import annotations

import math

import pytest
import torch

from rtdmd.functional.cps import cps_log_prob, cps_step
from rtdmd.functional.flow import interpolate, velocity_from_x0

SHAPE = (3, 4, 5, 6)


def _rand(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


@pytest.mark.parametrize('sigma_next', [0.7, 0.3, 0.0])
def test_eta_zero_is_euler(sigma_next: float) -> None:
    x, v = _rand(*SHAPE, seed=0, dtype=torch.float64), _rand(*SHAPE, seed=1, dtype=torch.float64)
    x_next, mean, std = cps_step(x, v, 0.9, sigma_next, eta=0.0, noise=None)
    euler = x + (sigma_next - 0.9) * v
    assert torch.allclose(x_next, euler, atol=1e-14)
    assert torch.equal(x_next, mean)
    assert torch.all(std == 0)


def test_eta_zero_matches_cps_mean_formula() -> None:
    """The Euler branch is the eta = 0 case of the CPS mean (cos 0 = 1), not a different map."""
    x, v = _rand(*SHAPE, seed=2, dtype=torch.float64), _rand(*SHAPE, seed=3, dtype=torch.float64)
    s, s_next = 0.8, 0.45
    cps_mean = (1 - s_next) * (x - s * v) + s_next * (x + (1 - s) * v)
    x_next, _, _ = cps_step(x, v, s, s_next, eta=0.0, noise=None)
    assert torch.allclose(x_next, cps_mean, atol=1e-13)


@pytest.mark.parametrize('eta', [0.0, 0.5, 0.9, 1.0])
def test_sigma_next_zero_is_deterministic(eta: float) -> None:
    x, v = _rand(*SHAPE, seed=4), _rand(*SHAPE, seed=5)
    s = 0.5
    a, mean_a, std_a = cps_step(x, v, s, 0.0, eta=eta, noise=None)
    b, _, std_b = cps_step(x, v, s, 0.0, eta=eta, noise=_rand(*SHAPE, seed=6))
    assert torch.equal(a, b)
    assert torch.equal(a, mean_a)
    assert torch.all(std_a == 0) and torch.all(std_b == 0)
    assert torch.allclose(a, x - s * v, atol=1e-6)  # x_next = x0_hat
    assert torch.equal(cps_log_prob(a, mean_a, std_a, kind='surrogate'), torch.zeros(SHAPE[0]))


def test_stochastic_step_requires_noise_and_valid_eta() -> None:
    x, v = _rand(*SHAPE, seed=7), _rand(*SHAPE, seed=8)
    with pytest.raises(ValueError):
        cps_step(x, v, 0.9, 0.5, eta=0.9, noise=None)
    with pytest.raises(ValueError):
        cps_step(x, v, 0.9, 0.5, eta=1.5, noise=torch.zeros_like(x))


def test_std_and_sample_formula_per_sample_sigma() -> None:
    x, v, z = (_rand(*SHAPE, seed=i, dtype=torch.float64) for i in (9, 10, 11))
    s = torch.tensor([1.0, 0.75, 0.5], dtype=torch.float64)
    s_next = torch.tensor([0.75, 0.5, 0.0], dtype=torch.float64)
    eta = 0.9
    x_next, mean, std = cps_step(x, v, s, s_next, eta, z)
    theta = eta * math.pi / 2
    assert std.shape == (3, 1, 1, 1)
    assert torch.allclose(std.flatten(), s_next * math.sin(theta), atol=1e-15)
    assert torch.allclose(x_next, mean + std * z, atol=1e-14)
    # Each row equals the scalar-sigma call on that row alone.
    for b in range(3):
        ref, ref_mean, ref_std = cps_step(
            x[b : b + 1], v[b : b + 1], float(s[b]), float(s_next[b]), eta, z[b : b + 1]
        )
        assert torch.allclose(x_next[b], ref[0], atol=1e-14)
        assert torch.allclose(mean[b], ref_mean[0], atol=1e-14)
        assert torch.allclose(std[b].flatten(), ref_std.flatten(), atol=1e-15)
    # The last sample (sigma_next = 0) is deterministic even though the others are not.
    assert torch.equal(x_next[2], mean[2])


def test_mean_is_independent_formula() -> None:
    x, v = _rand(*SHAPE, seed=12, dtype=torch.float64), _rand(*SHAPE, seed=13, dtype=torch.float64)
    s, s_next, eta = 0.75, 0.5, 0.9
    theta = eta * math.pi / 2
    x0_hat, eps_hat = x - s * v, x + (1 - s) * v
    expected = (1 - s_next) * x0_hat + s_next * math.cos(theta) * eps_hat
    _, mean, _ = cps_step(x, v, s, s_next, eta, torch.zeros_like(x))
    assert torch.allclose(mean, expected, atol=1e-14)


def test_monte_carlo_moments_match_mean_and_std() -> None:
    torch.manual_seed(0)
    n, d = 200_000, 3
    x = torch.randn(1, d).expand(n, d)
    v = torch.randn(1, d).expand(n, d)
    x_next, mean, std = cps_step(x, v, 0.75, 0.5, eta=0.7, noise=torch.randn(n, d))
    emp_mean, emp_std = x_next.mean(0), x_next.std(0)
    # Standard error of the mean is std / sqrt(n) ~ 1e-3; of the std about std / sqrt(2n).
    assert torch.allclose(emp_mean, mean[0], atol=5 * float(std) / math.sqrt(n))
    assert torch.allclose(emp_std, torch.full((d,), float(std)), rtol=0.01)


def test_coefficient_preserving_marginal() -> None:
    """With the exact velocity of a point mass x0, x_next ~ (1 - s') x0 + s' N(0, I)."""
    torch.manual_seed(1)
    n, d = 200_000, 3
    s, s_next, eta = 0.8, 0.4, 0.9
    x0 = torch.tensor([[1.5, -0.5, 2.0]], dtype=torch.float64).expand(n, d)
    eps = torch.randn(n, d, dtype=torch.float64)
    x = interpolate(x0, eps, s)
    v = velocity_from_x0(x, x0, s)  # exact marginal velocity of a point mass
    x_next, _, _ = cps_step(x, v, s, s_next, eta, torch.randn(n, d, dtype=torch.float64))
    resid = (x_next - (1 - s_next) * x0) / s_next  # should be N(0, I)
    assert torch.allclose(resid.mean(0), torch.zeros(d, dtype=torch.float64), atol=0.012)
    assert torch.allclose(resid.var(0), torch.ones(d, dtype=torch.float64), atol=0.015)
    cov = torch.cov(resid.T)
    off_diag = cov - torch.diag(torch.diagonal(cov))
    assert off_diag.abs().max() < 0.015


def test_gaussian_log_prob_matches_torch_normal() -> None:
    x, v, z = (_rand(*SHAPE, seed=i) for i in (14, 15, 16))
    s = torch.tensor([1.0, 0.75, 0.5])
    s_next = torch.tensor([0.75, 0.5, 0.25])
    x_next, mean, std = cps_step(x, v, s, s_next, 0.9, z)
    lp = cps_log_prob(x_next, mean, std, kind='gaussian')
    ref = torch.distributions.Normal(mean.double(), std.double()).log_prob(x_next.double())
    assert lp.shape == (3,)
    assert torch.allclose(lp.double(), ref.flatten(1).sum(1), rtol=1e-5)
    # Scalar std broadcasts to the whole batch.
    _, mean1, std1 = cps_step(x, v, 0.75, 0.5, 0.9, z)
    lp1 = cps_log_prob(x_next, mean1, std1, kind='gaussian')
    ref1 = torch.distributions.Normal(mean1.double(), float(std1)).log_prob(x_next.double())
    assert torch.allclose(lp1.double(), ref1.flatten(1).sum(1), rtol=1e-5)
    with pytest.raises(ValueError):
        cps_log_prob(x_next, mean, torch.zeros(3), kind='gaussian')


def test_surrogate_log_prob_is_negative_mse() -> None:
    a, b = _rand(*SHAPE, seed=17), _rand(*SHAPE, seed=18)
    lp = cps_log_prob(a, b, 0.3, kind='surrogate')
    ref = torch.stack([-torch.nn.functional.mse_loss(a[i], b[i]) for i in range(SHAPE[0])])
    assert torch.allclose(lp, ref, atol=1e-6)
    with pytest.raises(ValueError):
        cps_log_prob(a, b, 0.3, kind='bogus')  # type: ignore[arg-type]


def test_bf16_input_computes_in_fp32() -> None:
    x, v, z = (_rand(*SHAPE, seed=i).bfloat16() for i in (19, 20, 21))
    s = torch.tensor([0.9, 0.6, 0.3])
    s_next = torch.tensor([0.6, 0.3, 0.0])
    out = cps_step(x, v, s, s_next, 0.9, z)
    ref = cps_step(x.float(), v.float(), s, s_next, 0.9, z.float())
    for got, want in zip(out, ref, strict=True):
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, want.to(torch.bfloat16))


def test_float64_stays_float64() -> None:
    x, v = _rand(*SHAPE, seed=22, dtype=torch.float64), _rand(*SHAPE, seed=23, dtype=torch.float64)
    x_next, mean, std = cps_step(x, v, 0.5, 0.25, 0.5, torch.zeros_like(x))
    assert x_next.dtype == mean.dtype == std.dtype == torch.float64
