"""The monitors' set statistics against independent computations (scipy, matplotlib) and
closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.colors import rgb_to_hsv

from rtdmd.evaluation.sample_stats import (
    brightness,
    energy_distance,
    mean_pairwise_distance,
    rms_norm,
    saturation,
)


def test_energy_distance_matches_scipy_in_one_dimension() -> None:
    """scipy's 1-D energy distance (a V-statistic, returned as its square root) agrees up to
    the O(1/K) bias of its within-set terms."""
    from scipy.stats import energy_distance as scipy_energy

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=2000), rng.normal(0.7, 1.5, size=2000)
    got = float(energy_distance(torch.tensor(a)[:, None], torch.tensor(b)[:, None]))
    assert got == pytest.approx(scipy_energy(a, b) ** 2, rel=0.02)


def test_energy_distance_properties() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(64, 8, generator=gen)
    # Identical (paired) sets: zero up to rounding (cdist and pdist round differently).
    assert float(energy_distance(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(energy_distance(a + 3, a + 3)) == pytest.approx(0.0, abs=1e-6)
    nulls = torch.stack([energy_distance(torch.randn(4, 1024, generator=gen),
                                         torch.randn(4, 1024, generator=gen)) for _ in range(50)])
    spread = 2 * 1024 ** 0.5  # E|Y - Y'| of a standard Gaussian in 1024-D, about sqrt(2 D)
    assert abs(float(nulls.mean())) < 0.01 * spread  # unbiased even at K = 4 << D
    # A shift by the spread sqrt(D) in high dimension: 2 (sqrt(3 D) - sqrt(2 D)) / sqrt(2 D).
    y = torch.randn(64, 1024, generator=gen)
    x = torch.randn(64, 1024, generator=gen) + torch.nn.functional.one_hot(
        torch.tensor(0), 1024) * 1024 ** 0.5
    ratio = float(energy_distance(x, y) / mean_pairwise_distance(y))
    assert ratio == pytest.approx(2 * (1.5 ** 0.5 - 1), abs=0.02)
    with pytest.raises(ValueError, match='two \\(K >= 2, D\\) sample sets of one shape'):
        energy_distance(a, a[:, :3])


def test_pairwise_distance_and_rms() -> None:
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert float(mean_pairwise_distance(x)) == pytest.approx((5 + 10 + 5) / 3)
    assert rms_norm(x).tolist() == pytest.approx([0.0, 5 / 2 ** 0.5, 10 / 2 ** 0.5])
    with pytest.raises(ValueError, match='K >= 2'):
        mean_pairwise_distance(x[:1])


def test_saturation_and_brightness_match_hsv_and_luma() -> None:
    images = torch.rand(3, 3, 5, 7, generator=torch.Generator().manual_seed(2))
    hsv = rgb_to_hsv(images.permute(0, 2, 3, 1).numpy())
    assert saturation(images).numpy() == pytest.approx(hsv[..., 1].mean(axis=(1, 2)), rel=1e-5)
    grey = torch.full((1, 3, 4, 4), 235 / 255)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert float(saturation(grey)) == 0.0 and float(saturation(red)) == 1.0
    assert float(brightness(grey)) == pytest.approx(235 / 255, rel=1e-6)
    assert float(brightness(red)) == pytest.approx(0.299)
    assert float(saturation(torch.zeros(1, 3, 2, 2))) == 0.0  # black: no hue, no saturation
