"""Coefficient-preserving sampling (CPS) step and its transition log-probability.

ALGORITHM.md section 1.3. From ``x`` at ``sigma`` with velocity ``v``, to ``sigma_next``::

    x0_hat = x - sigma v ;  eps_hat = x + (1 - sigma) v ;  theta = eta * pi / 2
    mean   = (1 - sigma_next) x0_hat + sigma_next cos(theta) eps_hat
    std    = sigma_next sin(theta)
    x_next = mean + std * z ,   z ~ N(0, I)

``eta = 0`` is the Euler ODE step ``x + (sigma_next - sigma) v``; ``sigma_next = 0`` is always
deterministic (``x_next = x0_hat``, ``std = 0``). Arithmetic is float32 (float64 inputs stay
float64); results are cast back to the dtype of ``x``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .flow import SigmaLike, append_dims, eps_from_velocity, x0_from_velocity


def _as_sample_tensor(value: SigmaLike, like: Tensor) -> Tensor:
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return append_dims(value, like.ndim)


def cps_step(x: Tensor, v: Tensor, sigma: SigmaLike, sigma_next: SigmaLike, eta: float,
             noise: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """One CPS transition ``sigma -> sigma_next`` (``sigma_next < sigma``).

    Args:
        x: current sample, ``(B, ...)``.
        v: velocity prediction at ``(x, sigma)``, same shape as ``x``.
        sigma: current noise level, float or ``(B,)``.
        sigma_next: target noise level, float or ``(B,)``.
        eta: stochasticity in [0, 1]; the noise angle is ``theta = eta * pi / 2``.
        noise: standard normal ``z`` shaped like ``x``; may be ``None`` when the step is
            deterministic (``eta == 0`` or ``sigma_next == 0`` everywhere).

    Returns:
        ``(x_next, mean, std)``: the new sample, the transition mean (same shape as ``x``) and the
        transition std broadcastable to ``x`` (``(B, 1, ..., 1)`` or 0-d).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f'eta must lie in [0, 1], got {eta}')
    out_dtype = x.dtype
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, v = x.to(work), v.to(work)
    s = _as_sample_tensor(sigma, x)
    s_next = _as_sample_tensor(sigma_next, x)
    theta = eta * math.pi / 2
    x0_hat = x0_from_velocity(x, v, s)
    eps_hat = eps_from_velocity(x, v, s)
    # The Euler branch is taken where the step is deterministic: it is exact for eta = 0
    # (cos 0 = 1 makes the CPS mean equal to the Euler step) and gives x0_hat at sigma_next = 0.
    mean = (1 - s_next) * x0_hat + s_next * math.cos(theta) * eps_hat
    std = s_next * math.sin(theta)
    if eta == 0.0:
        mean = x + (s_next - s) * v
    if noise is None:
        # Validation only; with noise given there is no host sync: std == 0 makes the noise
        # term exactly 0 for the deterministic samples of a mixed batch.
        if eta > 0.0 and bool(torch.any(std > 0)):
            raise ValueError(
                'cps_step needs `noise` for a stochastic step (eta > 0, sigma_next > 0)'
            )
        x_next = mean
    else:
        x_next = mean + std * noise.to(work)
    return x_next.to(out_dtype), mean.to(out_dtype), std.to(out_dtype)


def cps_log_prob(x_next: Tensor, mean: Tensor, std: SigmaLike,
                 kind: Literal['surrogate', 'gaussian'] = 'surrogate') -> Tensor:
    """Log-probability of a CPS transition, one value per sample ``(B,)``.

    ``'surrogate'`` (the release's): ``-mean_{C,H,W} (x_next - mean)^2``; no ``1/(2 std^2)`` and
    no constant, so a deterministic step (``x_next == mean``) gives exactly 0.

    ``'gaussian'``: the normalised isotropic Gaussian
    ``sum_{C,H,W} [-(x_next - mean)^2 / (2 std^2) - log std - log(2 pi) / 2]``; it requires
    ``std > 0``.
    """
    diff = (x_next.float() - mean.float()).flatten(1)
    if kind == 'surrogate':
        return -diff.pow(2).mean(dim=1)
    if kind == 'gaussian':
        std_t = torch.as_tensor(std, dtype=diff.dtype, device=diff.device).reshape(-1)
        if bool(torch.any(std_t <= 0)):
            raise ValueError('the Gaussian CPS log-prob needs std > 0 (a stochastic step)')
        std_t = std_t if std_t.numel() > 1 else std_t.expand(diff.shape[0])
        d = diff.shape[1]
        quad = diff.pow(2).sum(dim=1) / (2 * std_t.pow(2))
        return -quad - d * torch.log(std_t) - d * 0.5 * math.log(2 * math.pi)
    raise ValueError(f"kind must be 'surrogate' or 'gaussian', got {kind!r}")


__all__ = ['cps_step', 'cps_log_prob']
