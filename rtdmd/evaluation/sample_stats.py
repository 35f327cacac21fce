"""Set statistics of generator samples that need no learned model: the reward-hacking monitors'.

All take float tensors; latents ``(N, D)`` (flattened), images ``(N, 3, H, W)`` in [0, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['brightness', 'colour_histogram', 'edge_energy', 'energy_distance',
           'mean_pairwise_distance',
           'rare_colour_mass', 'rms_norm', 'saturation', 'total_variation']

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


def edge_energy(images: Tensor) -> Tensor:
    """Per-image mean absolute difference of neighbouring pixels (horizontal and vertical, over
    channels; the anisotropic total variation per pixel pair): the share of the image's contrast
    at fine scale. Streaks, speckle, fragmented objects and the high-frequency patterns a reward
    model can be fooled by raise it; flat regions add nothing."""
    rgb = _rgb(images)
    across = (rgb[..., :, 1:] - rgb[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    down = (rgb[..., 1:, :] - rgb[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    return ((across + down) / 2).float()


def colour_histogram(images: Tensor, levels: int = 8) -> Tensor:
    """Per-image joint RGB histogram ``(N, levels ** 3)``, each row summing to 1: every channel
    cut into ``levels`` equal bins (8: bins of 32 grey levels, fine enough to tell a palette
    colour from its blend with the background, coarse enough that a K-image set fills it)."""
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f'levels must be an integer >= 2, got {levels!r}')
    bins = (_rgb(images) * levels).long().clamp_max(levels - 1)  # (N, 3, H, W)
    index = (bins[:, 0] * levels + bins[:, 1]) * levels + bins[:, 2]
    counts = torch.zeros(index.shape[0], levels ** 3, dtype=torch.float64, device=images.device)
    counts.scatter_add_(1, index.flatten(1), torch.ones_like(index.flatten(1), dtype=torch.float64))
    return (counts / counts.sum(1, keepdim=True)).float()


def total_variation(p: Tensor, q: Tensor) -> Tensor:
    """Total variation distance ``sum |p - q| / 2`` of histograms over the last axis: the share
    of the mass that must move to turn one into the other, in [0, 1]."""
    if p.shape != q.shape:
        raise ValueError(f'histograms of different shapes: {tuple(p.shape)}, {tuple(q.shape)}')
    return (p.double() - q.double()).abs().sum(-1).div(2).float()


def rare_colour_mass(p: Tensor, reference: Tensor, rarity: float = 1e-3) -> Tensor:
    """The mass of histogram ``p`` in the bins where ``reference`` holds less than ``rarity``:
    the share of pixels in colours the reference (almost) never draws, in [0, 1]. Over the last
    axis; unlike :func:`total_variation` it ignores mass moved between colours the reference
    draws (a student that recolours an object to the prompt's colour)."""
    if p.shape[-1] != reference.shape[-1]:
        raise ValueError(f'histograms of different bins: {p.shape[-1]}, {reference.shape[-1]}')
    if not 0 <= rarity < 1:
        raise ValueError(f'rarity must be in [0, 1), got {rarity!r}')
    return (p.double() * (reference.double() < rarity)).sum(-1).float()


def _rgb(images: Tensor) -> Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f'expected RGB images (N, 3, H, W), got {tuple(images.shape)}')
    return images.double().clamp(0, 1)
