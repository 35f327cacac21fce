"""Rectified-flow conventions: interpolation, x0 / eps / velocity conversions and CFG.

Convention (ALGORITHM.md section 1.1): ``x_sigma = (1 - sigma) * x0 + sigma * eps`` with
``sigma`` in [0, 1] (1 is pure noise), and the network predicts the velocity
``v = eps - x0``. ``sigma`` is a Python float or a tensor of shape ``(B,)`` that broadcasts over
the trailing dimensions of ``x`` (``(B, ...)``).
"""

from __future__ import annotations

from torch import Tensor

SigmaLike = float | Tensor


def append_dims(sigma: SigmaLike, ndim: int) -> SigmaLike:
    """Reshape a per-sample ``(B,)`` tensor to ``(B, 1, ..., 1)`` with ``ndim`` dims in total.

    Floats and 0-d tensors are returned unchanged (they already broadcast).
    """
    if not isinstance(sigma, Tensor) or sigma.ndim == 0:
        return sigma
    if sigma.ndim > ndim:
        raise ValueError(f'sigma has {sigma.ndim} dims, more than the {ndim} of the sample')
    return sigma.reshape(sigma.shape + (1,) * (ndim - sigma.ndim))


def interpolate(x0: Tensor, eps: Tensor, sigma: SigmaLike) -> Tensor:
    """Point on the straight path: ``x_sigma = (1 - sigma) x0 + sigma eps``. Shapes ``(B, ...)``."""
    sigma = append_dims(sigma, x0.ndim)
    return (1 - sigma) * x0 + sigma * eps


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """Flow-matching regression target ``v = eps - x0``."""
    return eps - x0


def x0_from_velocity(x: Tensor, v: Tensor, sigma: SigmaLike) -> Tensor:
    """Clean-sample prediction ``x0_hat = x - sigma v``."""
    return x - append_dims(sigma, x.ndim) * v


def eps_from_velocity(x: Tensor, v: Tensor, sigma: SigmaLike) -> Tensor:
    """Noise prediction ``eps_hat = x + (1 - sigma) v``."""
    return x + (1 - append_dims(sigma, x.ndim)) * v


def velocity_from_x0(x: Tensor, x0: Tensor, sigma: SigmaLike) -> Tensor:
    """Velocity implied by a clean prediction: ``v = (x - x0) / sigma`` (``sigma > 0``)."""
    return (x - x0) / append_dims(sigma, x.ndim)


def velocity_from_eps(x: Tensor, eps: Tensor, sigma: SigmaLike) -> Tensor:
    """Velocity implied by a noise prediction: ``v = (eps - x) / (1 - sigma)`` (``sigma < 1``)."""
    return (eps - x) / (1 - append_dims(sigma, x.ndim))


def cfg_combine(v_uncond: Tensor, v_cond: Tensor, scale: SigmaLike) -> Tensor:
    """Classifier-free guidance ``v = v_u + w (v_c - v_u)``; ``scale`` is a float or ``(B,)``."""
    return v_uncond + append_dims(scale, v_cond.ndim) * (v_cond - v_uncond)


__all__ = [
    'append_dims', 'interpolate', 'velocity_target', 'x0_from_velocity', 'eps_from_velocity',
    'velocity_from_x0', 'velocity_from_eps', 'cfg_combine',
]
