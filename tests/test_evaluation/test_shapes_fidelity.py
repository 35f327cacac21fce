"""Fidelity of the shapes world: the Frechet distance and the shipped feature network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtdmd.datasets.shapes import ShapesPromptDataset
from rtdmd.evaluation.shapes_fidelity import (
    corrupt,
    embed,
    feature_targets,
    fidelity_distance,
    frechet_distance,
    load_feature_net,
    render_references,
)


def test_frechet_distance_matches_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    # Diagonal Gaussians: FD = |mu_a - mu_b|^2 + sum (s_a - s_b)^2 with s the stds.
    a = rng.normal([0.0, 1.0, 2.0], [1.0, 2.0, 0.5], size=(200_000, 3))
    b = rng.normal([1.0, 1.0, 0.0], [3.0, 1.0, 0.5], size=(200_000, 3))
    expected = 1 + 0 + 4 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.01)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Rotating both sets the same way leaves it unchanged.
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    assert frechet_distance(a @ q, b @ q) == pytest.approx(frechet_distance(a, b), rel=1e-6)
    with pytest.raises(ValueError, match='feature sets'):
        frechet_distance(a[:, :2], b)


@pytest.fixture(scope='module')
def heldout() -> list[dict]:
    return [it['metadata'] for it in ShapesPromptDataset('heldout', per_tag=40).items]


def test_distance_is_near_zero_between_two_samples_of_the_world(heldout) -> None:
    net = load_feature_net()
    reference = embed(net, render_references(heldout, seed=0, copies=4))
    other = render_references(heldout, seed=123)  # the same prompts, other scenes
    same = frechet_distance(embed(net, other), reference)
    assert same == pytest.approx(fidelity_distance(other, heldout, net, seed=0))
    noisy = other + 0.05 * torch.randn(other.shape, generator=torch.Generator().manual_seed(0))
    blurred = torch.nn.functional.avg_pool2d(other, 3, stride=1, padding=1,
                                             count_include_pad=False)
    washed = other.clamp(0.5, 1.0) ** 0.5
    shuffled = other[:, [1, 2, 0]]  # every colour off the palette
    for name, corrupted in (('noise', noisy.clamp(0, 1)), ('blur', blurred),
                            ('washed out', washed), ('channels', shuffled)):
        far = frechet_distance(embed(net, corrupted), reference)
        assert far > 20 * same, (name, far, same)


def test_feature_net_reads_the_scene(heldout) -> None:
    net = load_feature_net()
    images = render_references(heldout[:120], seed=9)
    counts, grid, kind = net(images)
    count_target, grid_target = feature_targets(images)
    assert (counts.argmax(-1) == count_target).float().mean() > 0.9
    assert (grid.argmax(-1) == grid_target).float().mean() > 0.9
    assert (kind.argmax(-1) == 0).float().mean() > 0.9  # renderings: no corruption
    corrupted, truth = corrupt(images, torch.Generator().manual_seed(0), p=1.0)
    assert (net(corrupted)[2].argmax(-1) == truth).float().mean() > 0.7
    assert embed(net, images).shape == (120, net.config['feature_dim'])
