"""Set statistics of generator samples that need no learned model: the reward-hacking monitors'.

All take float tensors; latents ``(N, D)`` (flattened), images ``(N, 3, H, W)`` in [0, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['brightness', 'frechet_distance', 'mean_pairwise_distance', 'rms_norm', 'saturation']

#: Rec. 601 luma weights of R, G, B: the brightness a viewer sees, not the mean channel value.
_LUMA = (0.299, 0.587, 0.114)


def frechet_distance(a: Tensor, b: Tensor) -> Tensor:
    """Squared Frechet distance between Gaussians fitted to the rows of ``a`` and ``b``.

    ``|mu_a - mu_b|^2 + tr C_a + tr C_b - 2 tr (C_a C_b)^{1/2}`` with the (biased, ``1/n``)
    sample covariances. The cross term is computed in the samples' dual space: with centred
    rows ``A`` (n x D), ``B`` (m x D), the non-zero eigenvalues of ``C_a C_b`` are the squared
    singular values of ``A B^T / sqrt(n m)``, so ``tr (C_a C_b)^{1/2}`` is the nuclear norm of
    that n x m matrix. This is exact for any dimension ``D`` (an image latent has thousands,
    a probe a handful of samples), needs no D x D matrix and no matrix square root.

    Args:
        a: ``(n, D)`` samples.
        b: ``(m, D)`` samples.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f'expected (n, D) and (m, D) samples, got {tuple(a.shape)} and '
                         f'{tuple(b.shape)}')
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = a - mu_a, b - mu_b
    n, m = a.shape[0], b.shape[0]
    cross = torch.linalg.matrix_norm(ca @ cb.T, ord='nuc') / (n * m) ** 0.5
    value = ((mu_a - mu_b).square().sum() + ca.square().sum() / n + cb.square().sum() / m
             - 2 * cross)
    return value.clamp_min(0.0).float()  # rounding can leave -1e-16 for identical sets


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
