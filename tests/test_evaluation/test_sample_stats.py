"""The monitors' set statistics against independent computations (scipy, matplotlib) and
closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.colors import rgb_to_hsv

from rtdmd.evaluation.sample_stats import (
    brightness,
    colour_histogram,
    edge_energy,
    energy_distance,
    mean_pairwise_distance,
    rare_colour_mass,
    rms_norm,
    saturation,
    total_variation,
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


def test_colour_histogram_matches_numpy_histogramdd() -> None:
    """Each image's joint RGB histogram is numpy's ``histogramdd`` over its pixels on the same
    equal bins (the top edge closed), normalised; pixel order does not change it."""
    rng = np.random.default_rng(0)
    images = torch.tensor(rng.random((3, 3, 9, 7)))
    images[0, :, :2] = 1.0  # the top edge falls into the last bin
    got = colour_histogram(images, levels=4).double()
    for n in range(3):
        pixels = images[n].flatten(1).T.numpy()
        want, _ = np.histogramdd(pixels, bins=[np.linspace(0, 1, 5)] * 3)
        np.testing.assert_allclose(got[n].numpy(), want.ravel() / pixels.shape[0], atol=1e-6)
    shuffled = images.flatten(2)[..., torch.randperm(63)].view_as(images)
    assert torch.allclose(colour_histogram(shuffled, levels=4), got.float())
    with pytest.raises(ValueError, match='levels'):
        colour_histogram(images, levels=1)


def test_total_variation_and_rare_colour_mass() -> None:
    """Total variation is half scipy's city-block distance: 0 for equal histograms, 1 for
    disjoint ones, symmetric. The rare-colour mass counts only the bins the reference holds
    below the rarity, so moving mass between the reference's own colours costs nothing."""
    from scipy.spatial.distance import cityblock

    rng = np.random.default_rng(1)
    p, q = rng.dirichlet(np.ones(16), size=2)
    tp, tq = torch.tensor(p), torch.tensor(q)
    assert float(total_variation(tp, tq)) == pytest.approx(cityblock(p, q) / 2, rel=1e-6)
    assert float(total_variation(tp, tq)) == pytest.approx(float(total_variation(tq, tp)))
    assert float(total_variation(tp, tp)) == 0.0
    assert float(total_variation(torch.eye(4)[0], torch.eye(4)[1])) == 1.0

    reference = torch.tensor([0.5, 0.4999, 0.0001, 0.0])
    assert float(rare_colour_mass(torch.tensor([0.1, 0.9, 0.0, 0.0]), reference)) == 0.0
    assert float(rare_colour_mass(torch.tensor([0.6, 0.1, 0.2, 0.1]), reference)) == \
        pytest.approx(0.3)
    rows = torch.tensor(rng.dirichlet(np.ones(4), size=5))
    want = (rows.numpy() * (reference.numpy() < 1e-3)).sum(1)
    np.testing.assert_allclose(rare_colour_mass(rows, reference).numpy(), want, rtol=1e-6)
    with pytest.raises(ValueError, match='rarity'):
        rare_colour_mass(rows, reference, rarity=1.0)


def test_edge_energy_matches_numpy_and_scales_with_contrast() -> None:
    """The mean absolute neighbour difference is numpy's ``diff`` along both axes; a flat image
    has none, a transposed one the same, and halving the contrast about grey halves it."""
    rng = np.random.default_rng(2)
    images = torch.tensor(rng.random((2, 3, 6, 5)))
    for n in range(2):
        x = images[n].numpy()
        want = (np.abs(np.diff(x, axis=2)).mean() + np.abs(np.diff(x, axis=1)).mean()) / 2
        assert float(edge_energy(images)[n]) == pytest.approx(want, rel=1e-6)
    assert torch.equal(edge_energy(torch.full((1, 3, 4, 4), 0.7)), torch.zeros(1))
    assert torch.allclose(edge_energy(images.transpose(2, 3)), edge_energy(images))
    assert torch.allclose(edge_energy(0.5 + (images - 0.5) / 2), edge_energy(images) / 2)
    stripes = torch.zeros(1, 3, 4, 4)
    stripes[..., ::2] = 1.0  # every horizontal neighbour pair differs by 1, no vertical one
    assert float(edge_energy(stripes)) == pytest.approx(0.5)
