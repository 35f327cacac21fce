"""Consistency jump and the two-sample / one-sample consistency estimators."""

from __future__ import annotations

import math

import torch

from rtdmd.functional.consistency import (
    consistency_jump_sigma,
    consistency_regularizer,
    consistency_regularizer_one_sample,
)


def test_jump_sigma_values_and_clamp() -> None:
    t = torch.tensor([0.5, 0.1, 0.02, 0.9801], dtype=torch.float64)
    delta = torch.tensor([200, 150, 20, 1])
    sigma = consistency_jump_sigma(t, delta)
    torch.testing.assert_close(sigma, torch.tensor([0.3, 0.0, 0.0, 0.9791], dtype=torch.float64))
    assert sigma.dtype == torch.float64
    # Python float t with a tensor of jumps; an int jump with a tensor t.
    torch.testing.assert_close(consistency_jump_sigma(0.8, torch.tensor([1, 100])),
                               torch.tensor([0.799, 0.7]))
    torch.testing.assert_close(consistency_jump_sigma(torch.tensor([0.8]), 50),
                               torch.tensor([0.75]))
    # A different timestep scale.
    torch.testing.assert_close(consistency_jump_sigma(torch.tensor([0.5]), 5, 10.0),
                               torch.tensor([0.0]))


def test_two_sample_estimator_is_unbiased_and_one_sample_is_biased_by_the_variance() -> None:
    # Per sample b and element: h = mu + sd * noise, independently for the two hops. Closed forms:
    #   E[two-sample] = mean (mu - h_a)^2 ;  E[one-sample] = mean (mu - h_a)^2 + mean sd^2.
    gen = torch.Generator().manual_seed(0)
    n, d = 100_000, 8
    mu = torch.randn(n, d, generator=gen, dtype=torch.float64) * 0.3
    h_a = mu + torch.randn(n, d, generator=gen, dtype=torch.float64) * 0.2
    sd = 0.5 + torch.rand(n, d, generator=gen, dtype=torch.float64)
    h1 = mu + sd * torch.randn(n, d, generator=gen, dtype=torch.float64)
    h2 = mu + sd * torch.randn(n, d, generator=gen, dtype=torch.float64)
    bias_sq = float(((mu - h_a) ** 2).mean())
    variance = float((sd**2).mean())

    two = float(consistency_regularizer(h1, h2, h_a))
    per_two = ((h1 - h_a) * (h2 - h_a)).mean(dim=1)
    se_two = float(per_two.std()) / math.sqrt(n)
    assert abs(two - bias_sq) < 5 * se_two

    one = float(consistency_regularizer_one_sample(h1, h_a))
    se_one = float(((h1 - h_a) ** 2).mean(dim=1).std()) / math.sqrt(n)
    assert abs(one - (bias_sq + variance)) < 5 * se_one
    # The one-sample bias is the hop variance, far outside the noise.
    assert abs(one - bias_sq) > 50 * se_one


def test_estimators_exact_values_and_shapes() -> None:
    gen = torch.Generator().manual_seed(1)
    h1, h2, h_a = (torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    expected = ((h1 - h_a) * (h2 - h_a)).flatten(1).mean(1).mean()
    torch.testing.assert_close(consistency_regularizer(h1, h2, h_a), expected)
    # h1 == h2: the two-sample form equals the one-sample MSE; h == h_a: zero.
    torch.testing.assert_close(consistency_regularizer(h1, h1, h_a),
                               consistency_regularizer_one_sample(h1, h_a))
    torch.testing.assert_close(consistency_regularizer_one_sample(h1, h_a),
                               ((h1 - h_a) ** 2).mean())
    assert float(consistency_regularizer(h_a, h2, h_a)) == 0.0
    # The estimator of a non-negative quantity can itself be negative (it is not a square).
    assert float(consistency_regularizer(h_a + 1, h_a - 1, h_a)) == -1.0
    out = consistency_regularizer(h1.bfloat16(), h2.bfloat16(), h_a.bfloat16())
    assert out.ndim == 0 and out.dtype == torch.float32


def test_gradients_flow_through_all_three_inputs() -> None:
    gen = torch.Generator().manual_seed(2)
    h1, h2, h_a = (torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
                   for _ in range(3))
    consistency_regularizer(h1, h2, h_a).backward()
    n = h1.numel()
    torch.testing.assert_close(h1.grad, (h2 - h_a).detach() / n)
    torch.testing.assert_close(h2.grad, (h1 - h_a).detach() / n)
    torch.testing.assert_close(h_a.grad, -(h1 + h2 - 2 * h_a).detach() / n)


def test_non_finite_inputs_are_visible_and_overflow_is_sanitised() -> None:
    for bad in (float('nan'), float('inf'), -float('inf')):
        h1 = torch.randn(3, 5, requires_grad=True)
        h2 = torch.randn(3, 5, requires_grad=True)
        h_a = torch.randn(3, 5, requires_grad=True)
        poisoned = h1.clone()
        poisoned.data[1, 2] = bad
        two = consistency_regularizer(poisoned, h2, h_a)
        one = consistency_regularizer_one_sample(poisoned, h_a)
        # A diverged fake score is not hidden behind a logged 0.0.
        assert torch.isnan(two) and torch.isnan(one)
    # Overflow of a finite product (float32) is sanitised to 0 with a finite zero gradient, as
    # the release does.
    big = torch.full((2, 3), 3e30, requires_grad=True)
    value = consistency_regularizer(big, big, torch.zeros(2, 3))
    assert float(value.detach()) == 0.0
    value.backward()
    assert torch.isfinite(big.grad).all() and float(big.grad.abs().max()) == 0.0
