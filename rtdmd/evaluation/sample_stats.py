"""Set statistics of generator samples that need no learned model: the reward-hacking monitors'.

All take float tensors; latents ``(N, D)`` (flattened), images ``(N, 3, H, W)`` in [0, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['brightness', 'energy_distance', 'mean_pairwise_distance', 'rms_norm', 'saturation']

#: Rec. 601 luma weights of R, G, B: the brightness a viewer sees, not the mean channel value.
_LUMA = (0.299, 0.587, 0.114)


def energy_distance(a: Tensor, b: Tensor) -> Tensor:
    """Energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` of two equally sized sample sets,
    estimated without bias (U-statistics: no sample is paired with itself).

    ``a[i]`` and ``b[i]`` may share their noise (a probe's fixed seeds): the cross term skips
    the pairs ``i = j``, so identical sets give exactly 0 and independent sets from one
    distribution 0 in expectation, for any number of samples K and dimension D. (A Frechet
    distance of Gaussians fitted to K << D samples is biased far above 0 for two sets of the same
    distribution.) Zero only for equal distributions; a translation of an isotropic Gaussian by
    its spread ``sqrt(tr C)`` gives about 0.45 times ``E|Y - Y'|`` in 2 and in 1024 dimensions.
    ``scipy.stats.energy_distance`` is one-dimensional (and its V-statistic biased), hence this.

    Args:
        a: ``(K, D)`` samples.
        b: ``(K, D)`` samples, ``K >= 2``.
    """
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] < 2:
        raise ValueError(f'expected two (K >= 2, D) sample sets of one shape, got '
                         f'{tuple(a.shape)} and {tuple(b.shape)}')
    a, b = a.double(), b.double()
    off = ~torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    cross = torch.cdist(a, b)[off].mean()
    return (2 * cross - torch.pdist(a).mean() - torch.pdist(b).mean()).float()


def mean_pairwise_distance(x: Tensor) -> Tensor:
    """Mean Euclidean distance over the pairs of rows of ``x`` ``(K, D)``, ``K >= 2``."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f'expected (K >= 2, D) samples, got {tuple(x.shape)}')
    return torch.pdist(x.double()).mean().float()


def rms_norm(x: Tensor) -> Tensor:
    """Per-sample root-mean-square value ``|x| / sqrt(D)`` of ``(N, ...)`` samples: a norm that
    does not grow with the resolution."""
    return x.flatten(1).double().square().mean(1).sqrt().float()


def saturation(images: Tensor) -> Tensor:
    """Per-image mean HSV saturation ``(max - min) / max`` over pixels (0 where ``max = 0``)."""
    rgb = _rgb(images)
    high, low = rgb.amax(1), rgb.amin(1)
    sat = torch.where(high > 0, (high - low) / high.clamp_min(1e-12), torch.zeros_like(high))
    return sat.mean(dim=(1, 2))


def brightness(images: Tensor) -> Tensor:
    """Per-image mean Rec. 601 luma in [0, 1]."""
    weights = torch.tensor(_LUMA, dtype=torch.float64, device=images.device)
    return torch.einsum('nchw,c->nhw', _rgb(images), weights).mean(dim=(1, 2)).float()


def _rgb(images: Tensor) -> Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f'expected RGB images (N, 3, H, W), got {tuple(images.shape)}')
    return images.double().clamp(0, 1)
