"""Sub-interval renoising, ambient target / weight / loss and the shared-noise back-projection.

Monte Carlo checks run in float64 with fixed generators, so they are deterministic; tolerances are
stated in standard errors (or the KS critical value) so they would also hold for other seeds.
"""

from __future__ import annotations

import math

import pytest
import torch

from rtdmd.functional.ambient import (
    ambient_dsm_loss,
    ambient_loss_weight,
    ambient_target,
    renoise_sub_interval,
    sample_renoise_sigma,
    sub_interval_std,
)

# Two-point data distribution: clearly non-Gaussian, so matching moments *and* the CDF means the
# kernel really reproduces the flow marginal rather than a Gaussian look-alike.
POINTS = torch.tensor([-1.0, 2.0], dtype=torch.float64)
PROBS = torch.tensor([0.3, 0.7], dtype=torch.float64)
KS_CRIT = 1.95  # sqrt(-log(alpha / 2) / 2) for alpha = 0.001, times 1 / sqrt(n)


def _two_point(n: int, gen: torch.Generator) -> torch.Tensor:
    idx = (torch.rand(n, generator=gen, dtype=torch.float64) >= PROBS[0]).long()
    return POINTS[idx]


def _mixture_cdf(x: torch.Tensor, t: float) -> torch.Tensor:
    """Exact CDF of (1 - t) x0 + t eps for the two-point x0."""
    z = (x[:, None] - (1 - t) * POINTS[None]) / t
    return (PROBS[None] * torch.special.ndtr(z)).sum(dim=1)


def _ks_stat(samples: torch.Tensor, t: float) -> float:
    xs, _ = torch.sort(samples)
    n = xs.shape[0]
    cdf = _mixture_cdf(xs, t)
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n
    lower = torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(upper - cdf, cdf - lower).max())


def test_sub_interval_std_closes_the_variance_budget() -> None:
    gen = torch.Generator().manual_seed(0)
    s = torch.rand(64, generator=gen, dtype=torch.float64) * 0.9
    t = s + (1 - s) * torch.rand(64, generator=gen, dtype=torch.float64).clamp(min=0.01)
    sigma = sub_interval_std(s, t)
    a = (1 - t) / (1 - s)
    # a^2 s^2 + sigma_ts^2 = t^2: the renoised noise variance is exactly the flow's at t.
    torch.testing.assert_close(a**2 * s**2 + sigma**2, t**2, rtol=1e-12, atol=1e-14)
    assert sigma.shape == (64,) and sigma.dtype == torch.float64
    # s = 0: the kernel is the flow itself, sigma_ts = t; t = s: the 1e-12 floor.
    assert float(sub_interval_std(0.0, 0.4)) == pytest.approx(0.4, rel=1e-6)
    assert float(sub_interval_std(torch.tensor([0.5], dtype=torch.float64),
                                  torch.tensor([0.5], dtype=torch.float64))) == pytest.approx(1e-6)


@pytest.mark.parametrize('s,t', [(0.0, 0.5), (0.3, 0.6), (0.75, 0.8), (0.5, 0.98)])
def test_renoise_marginal_matches_flow_marginal(s: float, t: float) -> None:
    n = 100_000
    gen = torch.Generator().manual_seed(1)
    x0 = _two_point(n, gen)
    x_s = (1 - s) * x0 + s * torch.randn(n, generator=gen, dtype=torch.float64)
    x_t, sigma_ts = renoise_sub_interval(x_s, s, t, torch.randn(n, generator=gen,
                                                               dtype=torch.float64))
    assert x_t.dtype == torch.float64 and sigma_ts.ndim == 0
    mean0 = float((PROBS * POINTS).sum())
    var0 = float((PROBS * POINTS**2).sum()) - mean0**2
    exact_mean, exact_var = (1 - t) * mean0, (1 - t) ** 2 * var0 + t**2
    assert abs(float(x_t.mean()) - exact_mean) < 5 * math.sqrt(exact_var / n)
    # Var of the sample variance ~ (m4 - var^2) / n; 2 * var^2 * 3 / n is a safe bound here.
    assert abs(float(x_t.var()) - exact_var) < 5 * math.sqrt(6 * exact_var**2 / n)
    assert _ks_stat(x_t, t) < KS_CRIT / math.sqrt(n)
    # The same x0 with fresh flow noise: identical quantiles up to sampling error.
    direct = (1 - t) * x0 + t * torch.randn(n, generator=gen, dtype=torch.float64)
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    torch.testing.assert_close(torch.quantile(x_t, q), torch.quantile(direct, q), rtol=0,
                               atol=0.03)


def test_renoise_test_has_power_against_a_wrong_kernel() -> None:
    # Variance-exploding renoising (no 1-t / 1-s rescale) must fail the same KS check.
    s, t, n = 0.3, 0.6, 100_000
    gen = torch.Generator().manual_seed(2)
    x_s = (1 - s) * _two_point(n, gen) + s * torch.randn(n, generator=gen, dtype=torch.float64)
    wrong = x_s + math.sqrt(t**2 - s**2) * torch.randn(n, generator=gen, dtype=torch.float64)
    assert _ks_stat(wrong, t) > 10 * KS_CRIT / math.sqrt(n)


def test_renoise_per_sample_levels_and_vector_data() -> None:
    # Fixed data vector, per-sample (s, t): every coordinate has mean (1-t) x0 and std t.
    reps, d = 100_000, 3
    gen = torch.Generator().manual_seed(3)
    x0 = torch.tensor([1.5, -0.5, 0.0], dtype=torch.float64).expand(reps, d)
    s = torch.tensor([0.0, 0.4], dtype=torch.float64).repeat(reps // 2)
    t = torch.tensor([0.7, 0.7], dtype=torch.float64).repeat(reps // 2)
    x_s = (1 - s[:, None]) * x0 + s[:, None] * torch.randn(reps, d, generator=gen,
                                                           dtype=torch.float64)
    x_t, sigma_ts = renoise_sub_interval(x_s, s, t, torch.randn(reps, d, generator=gen,
                                                               dtype=torch.float64))
    assert sigma_ts.shape == (reps,)
    for half in (0, 1):
        block = x_t[half::2]
        torch.testing.assert_close(block.mean(0), 0.3 * x0[0], rtol=0, atol=5 * 0.7 / 223)
        torch.testing.assert_close(block.std(0), torch.full((d,), 0.7, dtype=torch.float64),
                                   rtol=0, atol=0.01)


def test_renoise_keeps_dtype_and_gradient() -> None:
    x_s = torch.randn(4, 2, 3, 3, dtype=torch.bfloat16, requires_grad=True)
    x_t, _ = renoise_sub_interval(x_s, torch.full((4,), 0.25), torch.full((4,), 0.5),
                                  torch.randn(4, 2, 3, 3))
    assert x_t.dtype == torch.bfloat16
    x_t.float().sum().backward()
    # dx_t / dx_s = a = (1 - t) / (1 - s) = 2 / 3.
    torch.testing.assert_close(x_s.grad.float(), torch.full((4, 2, 3, 3), 2 / 3), rtol=1e-2,
                               atol=0)


def test_ambient_target_at_s0_is_the_flow_target() -> None:
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(8, 4, 5, 5, generator=gen, dtype=torch.float64)
    z = torch.randn(8, 4, 5, 5, generator=gen, dtype=torch.float64)
    t = torch.rand(8, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    target = ambient_target(x0, 0.0, t, z)
    torch.testing.assert_close(target, z - x0, rtol=1e-12, atol=1e-12)
    # ... and x_t is the plain interpolant, so (x_t, T) is ordinary flow matching.
    x_t, _ = renoise_sub_interval(x0, 0.0, t, z)
    torch.testing.assert_close(x_t, (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * z)


def _gaussian_v_exact(x: torch.Tensor, t: torch.Tensor, m: float, c: float) -> torch.Tensor:
    """E[eps - x0 | x_t = x] for x0 ~ N(m, c^2): linear regression of jointly Gaussian variables."""
    cov = t - (1 - t) * c**2
    var = (1 - t) ** 2 * c**2 + t**2
    return -m + cov / var * (x - (1 - t) * m)


def _two_point_v_exact(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[eps - x0 | x_t = x] = (x - E[x0 | x]) / t for the two-point x0 (posterior over points)."""
    log_w = torch.log(PROBS)[None] - 0.5 * ((x[:, None] - (1 - t[:, None]) * POINTS[None])
                                            / t[:, None]) ** 2
    e_x0 = (torch.softmax(log_w, dim=1) * POINTS[None]).sum(dim=1)
    return (x - e_x0) / t


def _moment_z_scores(residual: torch.Tensor, x_t: torch.Tensor) -> list[float]:
    """|mean(residual f(x_t))| / SE for a few test functions f."""
    fns = [torch.ones_like(x_t), x_t, x_t**2, torch.tanh(2 * x_t), torch.exp(-x_t**2)]
    out = []
    for f in fns:
        vals = residual * f
        out.append(abs(float(vals.mean())) / (float(vals.std()) / math.sqrt(vals.shape[0])))
    return out


@pytest.mark.parametrize('data', ['gaussian', 'two_point'])
def test_ambient_target_is_unbiased_for_the_marginal_velocity(data: str) -> None:
    n = 100_000
    gen = torch.Generator().manual_seed(5)
    m, c = 0.7, 0.5
    if data == 'gaussian':
        x0 = m + c * torch.randn(n, generator=gen, dtype=torch.float64)
    else:
        x0 = _two_point(n, gen)
    # Per-sample levels as in training: s from a few-step list, t from the renoise sampler.
    s = torch.tensor([0.0, 0.5, 0.75, 0.9], dtype=torch.float64)[torch.randint(
        0, 4, (n,), generator=gen)]
    t = sample_renoise_sigma(s, torch.rand(n, generator=gen, dtype=torch.float64))
    x_s = (1 - s) * x0 + s * torch.randn(n, generator=gen, dtype=torch.float64)
    z = torch.randn(n, generator=gen, dtype=torch.float64)
    x_t, sigma_ts = renoise_sub_interval(x_s, s, t, z)
    target = ambient_target(x_s, s, t, z)
    v = _gaussian_v_exact(x_t, t, m, c) if data == 'gaussian' else _two_point_v_exact(x_t, t)
    # E[(T - v(x_t)) f(x_t)] = 0 for every f  <=>  E[T | x_t] = v(x_t).
    assert max(_moment_z_scores(target - v, x_t)) < 5.0
    # Power: dropping the t term of B biases the target by -(t / sigma_ts) E[z | x_t].
    wrong = target - (t / sigma_ts) * z
    assert _moment_z_scores(wrong - v, x_t)[1] > 20.0


def test_loss_weight_values() -> None:
    sigma = torch.tensor([0.0, 0.1, 0.2, 1 / math.sqrt(10), 0.5, 1.0, float('nan')])
    w = ambient_loss_weight(sigma)
    expected = torch.tensor([0.0, 0.1, 0.4, 1.0, 1.0, 1.0, 0.0])
    torch.testing.assert_close(w, expected, rtol=1e-6, atol=1e-7)
    # Same as the release's scale-moved-out form: sigma^2 * clamp(1 / sigma^2, 0, 10), nan -> 0,
    # inf -> 10 (sigma = 0 gives 0 * 10 = 0).
    inv = torch.nan_to_num(torch.clamp(1 / sigma**2, 0, 10), nan=0.0, posinf=10.0)
    torch.testing.assert_close(w, torch.nan_to_num(sigma**2 * inv, nan=0.0))
    torch.testing.assert_close(ambient_loss_weight(sigma, max_weight=4.0)[:3],
                               torch.tensor([0.0, 0.04, 0.16]))
    torch.testing.assert_close(ambient_loss_weight(sigma, move_scale_out=False), torch.ones(7))


def test_dsm_loss_value_and_gradient() -> None:
    gen = torch.Generator().manual_seed(6)
    v = torch.randn(5, 2, 4, 4, generator=gen, requires_grad=True)
    target = torch.randn(5, 2, 4, 4, generator=gen, requires_grad=True)
    sigma = torch.tensor([0.05, 0.2, 0.3, 0.6, 0.9])
    w = torch.clamp(10 * sigma**2, max=1.0)[:, None, None, None]
    loss = ambient_dsm_loss(v, target, sigma)
    torch.testing.assert_close(loss, (w * (v - target) ** 2).mean())
    loss.backward()
    torch.testing.assert_close(v.grad, 2 * w * (v - target).detach() / v.numel())
    assert target.grad is None  # the target is a regression constant
    plain = ambient_dsm_loss(v, target, sigma, move_scale_out=False)
    torch.testing.assert_close(plain, ((v - target) ** 2).mean())


def test_sample_renoise_sigma_mapping_bounds_and_monotonicity() -> None:
    u = torch.linspace(0, 1, 101, dtype=torch.float64)[:-1]
    for s in (0.0, 0.25, 0.5, 0.75, 0.967):
        t = sample_renoise_sigma(s, u)
        tau = torch.clamp(1000 * s + 10 + u * (1000 - 1000 * s - 10), 20, 980)
        torch.testing.assert_close(t, tau / 1000)
        assert float(t.min()) >= 0.02 and float(t.max()) <= 0.98
        assert bool((t[1:] >= t[:-1]).all())          # non-decreasing in u
        assert bool((t > s).all())                      # sub-interval is never empty
    # Non-decreasing in s at fixed u, and the clamps are hit at both ends.
    s_grid = torch.linspace(0, 0.96, 50, dtype=torch.float64)
    t_s = sample_renoise_sigma(s_grid, torch.full((50,), 0.3, dtype=torch.float64))
    assert bool((t_s[1:] >= t_s[:-1]).all())
    assert float(sample_renoise_sigma(0.0, torch.zeros(1))) == pytest.approx(0.02)
    assert float(sample_renoise_sigma(0.0, torch.full((1,), 0.9999))) == pytest.approx(0.98)
    # max_step is also capped at num_train_timesteps - 1.
    t_cap = sample_renoise_sigma(0.0, torch.full((1,), 0.9999), max_step=5000.0)
    assert float(t_cap) == pytest.approx(0.999)
