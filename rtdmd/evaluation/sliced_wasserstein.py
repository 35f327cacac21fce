"""Sliced Wasserstein-2 distance between two equal-size sample sets."""

from __future__ import annotations

import torch
from torch import Tensor


def fixed_projections(dim: int, num_projections: int, seed: int = 0) -> Tensor:
    """``num_projections`` unit directions in R^dim drawn once from a seeded Gaussian."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(num_projections, dim, generator=gen, dtype=torch.float64)
    return theta / theta.norm(dim=1, keepdim=True)


def sliced_wasserstein2(x: Tensor, y: Tensor, projections: Tensor) -> Tensor:
    """``SW2(x, y) = sqrt(mean_theta W2^2(<theta, x>, <theta, y>))`` for ``x, y`` of shape (N, d).

    The 1-D W2 between two empirical measures of equal size is the root mean squared difference
    of their sorted values.
    """
    if x.shape != y.shape:
        raise ValueError(f'sliced_wasserstein2 needs equal-size sample sets, got '
                         f'{tuple(x.shape)} and {tuple(y.shape)}')
    px = torch.sort(x.double() @ projections.T, dim=0).values
    py = torch.sort(y.double() @ projections.T, dim=0).values
    return (px - py).pow(2).mean().sqrt()
