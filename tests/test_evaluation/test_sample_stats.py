"""The monitors' set statistics against independent computations (scipy, matplotlib)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.colors import rgb_to_hsv

from rtdmd.evaluation.sample_stats import (
    brightness,
    frechet_distance,
    mean_pairwise_distance,
    rms_norm,
    saturation,
)


def _frechet_primal(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook D x D form: tr sqrt(C_a C_b) = tr sqrt(C_a^1/2 C_b C_a^1/2) by eigh."""
    ca, cb = np.cov(a.T, bias=True), np.cov(b.T, bias=True)
    w, v = np.linalg.eigh(ca)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cb @ root), 0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * cross)


@pytest.mark.parametrize('n, m, d', [(40, 30, 5), (6, 9, 50)])  # more samples or dimensions
def test_frechet_matches_the_primal_form(n: int, m: int, d: int) -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = 0.5 + rng.normal(size=(m, d)) * rng.uniform(0.5, 2, size=d)
    got = float(frechet_distance(torch.tensor(a), torch.tensor(b)))
    assert got == pytest.approx(_frechet_primal(a, b), rel=1e-5)


def test_frechet_properties() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(64, 8, generator=gen)
    assert float(frechet_distance(a, a)) == pytest.approx(0.0, abs=1e-5)
    shift = torch.arange(8.0)
    # A common translation changes nothing; translating one set adds |shift|^2.
    assert float(frechet_distance(a + 3, a + 3)) == pytest.approx(0.0, abs=1e-5)
    assert float(frechet_distance(a, a + shift)) == pytest.approx(float(shift.square().sum()),
                                                                  rel=1e-5)
    # Scaling one set by s: the covariance term is (1 - s)^2 tr C (same eigenvectors).
    centred = a - a.mean(0)
    assert float(frechet_distance(centred, 3 * centred)) == pytest.approx(
        4 * float(centred.square().sum(1).mean()), rel=1e-4)
    with pytest.raises(ValueError, match=r'\(n, D\) and \(m, D\)'):
        frechet_distance(a, a[:, :3])


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
