"""Schedule values and sampling properties of ``rtdmd.functional.timesteps``."""

from __future__ import annotations

import math

import pytest
import torch

from rtdmd.functional.timesteps import (
    flux2_empirical_mu,
    flux_dynamic_mu,
    sample_sigmas,
    shift_sigmas,
    sigma_to_timestep,
    step_list_to_sigmas,
    time_shift_exponential,
    timestep_to_sigma,
)

STEPS = [1000, 750, 500, 250]


def test_sd3_static_shift_schedule() -> None:
    sigmas = step_list_to_sigmas(STEPS, shift=3.0)
    assert sigmas.dtype == torch.float32
    assert torch.allclose(sigmas, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]), atol=1e-7)
    assert sigmas[-1] == 0.0 and sigmas[0] == 1.0


def test_flux1_dynamic_mu_schedule() -> None:
    mu = flux_dynamic_mu(1024)
    assert mu == pytest.approx(0.63, abs=1e-12)
    sigmas = step_list_to_sigmas(STEPS, mu=mu)
    expected = torch.tensor([1.0, 0.849, 0.653, 0.385, 0.0])
    assert torch.allclose(sigmas, expected, atol=1e-3)
    # 1024 px: L = 64 * 64 = 4096 = max_seq_len gives max_shift.
    assert flux_dynamic_mu(4096) == pytest.approx(1.15, abs=1e-12)
    sigmas_1k = step_list_to_sigmas(STEPS, mu=flux_dynamic_mu(4096), append_zero=False)
    assert torch.allclose(sigmas_1k, torch.tensor([1.0, 0.905, 0.760, 0.513]), atol=1e-3)


def test_flux_dynamic_mu_is_linear_through_endpoints() -> None:
    assert flux_dynamic_mu(256) == pytest.approx(0.5, abs=1e-12)
    assert flux_dynamic_mu(
        100, base_seq_len=100, max_seq_len=200, base_shift=0.2, max_shift=0.8
    ) == pytest.approx(0.2)
    assert flux_dynamic_mu(
        150, base_seq_len=100, max_seq_len=200, base_shift=0.2, max_shift=0.8
    ) == pytest.approx(0.5)


def test_flux2_empirical_mu_schedule() -> None:
    mu = flux2_empirical_mu(1024, 4)
    assert mu == pytest.approx(2.031, abs=1e-3)
    sigmas = step_list_to_sigmas(STEPS, mu=mu)
    assert torch.allclose(sigmas, torch.tensor([1.0, 0.958, 0.884, 0.718, 0.0]), atol=1e-3)
    sigmas_1k = step_list_to_sigmas(STEPS, mu=flux2_empirical_mu(4096, 4), append_zero=False)
    assert torch.allclose(sigmas_1k, torch.tensor([1.0, 0.967, 0.908, 0.767]), atol=1e-3)


def test_flux2_empirical_mu_interpolation_endpoints() -> None:
    length = 2000
    m200 = 1.6927e-4 * length + 0.45667
    m10 = 8.738e-5 * length + 1.8983
    assert flux2_empirical_mu(length, 200) == pytest.approx(m200, abs=1e-12)
    assert flux2_empirical_mu(length, 10) == pytest.approx(m10, abs=1e-12)
    # Above 4300 tokens mu no longer depends on the number of steps.
    assert flux2_empirical_mu(5000, 4) == pytest.approx(1.6927e-4 * 5000 + 0.45667, abs=1e-12)
    assert flux2_empirical_mu(5000, 4) == flux2_empirical_mu(5000, 50)


def test_time_shift_exponential_endpoints_and_formula() -> None:
    u = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for mu in (0.63, 2.031, -1.0):
        out = time_shift_exponential(u, mu)
        assert not torch.isnan(out).any()
        assert out[0] == 0.0 and out[1] == 1.0
    # Literal formula of the method in Python floats, on the interior.
    for ui in (0.1, 0.25, 0.5, 0.9):
        want = math.exp(1.3) / (math.exp(1.3) + 1 / ui - 1)
        assert float(time_shift_exponential(ui, 1.3)) == pytest.approx(want, rel=1e-14)
    grid = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(time_shift_exponential(grid, 0.0), grid, atol=1e-15)


def test_static_shift_formula_and_equivalence_to_exponential() -> None:
    grid = torch.linspace(0, 1, 21, dtype=torch.float64)
    for shift in (1.0, 3.0, 0.5):
        out = shift_sigmas(grid, shift)
        want = torch.tensor(
            [shift * u / (1 + (shift - 1) * u) for u in grid.tolist()], dtype=torch.float64
        )
        assert torch.allclose(out, want, atol=1e-15)
        # shift = e^mu turns the exponential shift into the static one.
        assert torch.allclose(time_shift_exponential(grid, math.log(shift)), out, atol=1e-14)
    assert torch.allclose(shift_sigmas(grid, 1.0), grid, atol=0)
    with pytest.raises(ValueError):
        shift_sigmas(grid, 0.0)


def test_step_list_options() -> None:
    plain = step_list_to_sigmas(STEPS, append_zero=False)
    assert torch.equal(plain, torch.tensor([1.0, 0.75, 0.5, 0.25]))
    as_tensor = step_list_to_sigmas(torch.tensor(STEPS), shift=3.0)
    assert torch.equal(as_tensor, step_list_to_sigmas(STEPS, shift=3.0))
    scaled = step_list_to_sigmas([10, 5], num_train_timesteps=10)
    assert torch.equal(scaled, torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError):
        step_list_to_sigmas(STEPS, shift=3.0, mu=0.5)
    with pytest.raises(ValueError):
        step_list_to_sigmas([1200, 500])


def test_sigma_timestep_roundtrip() -> None:
    sigma = torch.rand(100, generator=torch.Generator().manual_seed(0))
    t = sigma_to_timestep(sigma)
    assert torch.allclose(t, sigma * 1000)
    assert torch.allclose(timestep_to_sigma(t), sigma, rtol=1e-6, atol=0)
    assert torch.allclose(sigma_to_timestep(timestep_to_sigma(t)), t, rtol=1e-6, atol=0)
    assert sigma_to_timestep(0.75) == 750.0
    assert timestep_to_sigma(750.0) == 0.75
    assert timestep_to_sigma(sigma_to_timestep(0.3, scale=1.0), scale=1.0) == 0.3


@pytest.mark.parametrize('mode', ['uniform', 'logit_normal'])
def test_sample_sigmas_bounds_and_reproducibility(mode: str) -> None:
    low, high = 0.02, 0.98
    a = sample_sigmas(10_000, mode, generator=torch.Generator().manual_seed(3), low=low, high=high)
    b = sample_sigmas(10_000, mode, generator=torch.Generator().manual_seed(3), low=low, high=high)
    c = sample_sigmas(10_000, mode, generator=torch.Generator().manual_seed(4), low=low, high=high)
    assert a.shape == (10_000,) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= low and a.max() <= high


def test_sample_sigmas_distribution() -> None:
    g = torch.Generator().manual_seed(0)
    n = 200_000
    uni = sample_sigmas(n, 'uniform', generator=g, low=0.2, high=0.6)
    assert float(uni.mean()) == pytest.approx(0.4, abs=3e-3)
    assert float(uni.var()) == pytest.approx(0.4**2 / 12, rel=0.02)
    ln = sample_sigmas(n, 'logit_normal', generator=g, logit_mean=0.8, logit_std=1.2)
    assert float(ln.median()) == pytest.approx(1 / (1 + math.exp(-0.8)), abs=5e-3)
    ln_scaled = sample_sigmas(n, 'logit_normal', generator=g, logit_mean=-0.5, low=0.1, high=0.9)
    want = 0.1 + 0.8 / (1 + math.exp(0.5))
    assert float(ln_scaled.median()) == pytest.approx(want, abs=5e-3)
    # logit_std = 0 collapses to the median exactly.
    point = sample_sigmas(5, 'logit_normal', generator=g, logit_mean=0.0, logit_std=0.0)
    assert torch.equal(point, torch.full((5,), 0.5))


def test_sample_sigmas_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        sample_sigmas(4, 'cosine')  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sample_sigmas(4, low=0.8, high=0.2)
    with pytest.raises(ValueError):
        sample_sigmas(4, 'logit_normal', logit_std=-1.0)
