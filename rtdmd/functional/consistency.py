"""Consistency regulariser on the fake score (ALGORITHM.md 3.4).

With ``h(x, tau) = x - sigma(tau) v_f(x, tau)`` the fake score's x0-prediction, the optimal fake
denoiser is a martingale along the reverse CPS chain: from the anchor ``h_a = h(x_t, tau)``, one
CPS hop ``t -> sigma'`` gives ``x'`` with ``E[h(x', tau') | x_t] = h_a``. The regulariser
estimates ``|| E[h(x' | x_t)] - h_a ||^2`` without bias from two independent hops ``x'_1, x'_2``
sharing the jump ``tau'``::

    L_cons = mean_B[ mean_{C,H,W}( (h(x'_1) - h_a) * (h(x'_2) - h_a) ) ]

since ``E[(h_1 - h_a)(h_2 - h_a)] = (E h - h_a)^2`` for independent ``h_1, h_2``. The one-sample
form ``mean (h_1 - h_a)^2`` adds ``Var[h | x_t]`` and is kept only as a fallback.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .flow import SigmaLike


def consistency_jump_sigma(t: SigmaLike, jump_steps: Tensor | int,
                           num_train_timesteps: float = 1000.0) -> Tensor:
    """Level after the consistency jump: ``sigma' = max(N t - delta, 0) / N``.

    ``tau = N t`` is the model timestep (``N = num_train_timesteps``) and ``delta`` the integer
    jump drawn by the caller from ``UniformInt{1..eps_T}`` (``eps_T = 200`` in the release).

    Args:
        t: anchor level in sigma units, float or ``(B,)``.
        jump_steps: ``delta``, an int or an integer ``(B,)`` tensor, in timestep units.
        num_train_timesteps: ``N``.

    Returns:
        ``sigma'``, ``(B,)`` (0-d when both inputs are scalars), in the floating dtype of ``t``
        (float32 for a Python float or a low-precision tensor).
    """
    is64 = isinstance(t, Tensor) and t.dtype == torch.float64
    dtype = torch.float64 if is64 else torch.float32
    device = t.device if isinstance(t, Tensor) else (
        jump_steps.device if isinstance(jump_steps, Tensor) else None)
    tau = torch.as_tensor(t, dtype=dtype, device=device) * num_train_timesteps
    delta = torch.as_tensor(jump_steps, device=device).to(dtype)
    return torch.clamp(tau - delta, min=0.0) / num_train_timesteps


def _sanitised_mean(product_fn: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
    """``mean_B mean_{C..} product_fn(*tensors)`` in float32, an overflow -> 0, a NaN input -> NaN.

    The release sanitises a non-finite value to 0. That stays for finite inputs whose product
    overflows: a first detached pass decides finiteness, and the differentiable pass then sees
    zeros in place of the inputs, which keeps the backward finite too (``nan_to_num`` on the
    output alone would still send ``0 * nan = nan`` into the fake score's gradients). Inputs
    that are themselves not finite (a diverged fake score) give NaN: a silent 0 would hide the
    divergence from the log and from the optimizer guard, which skips such a step.
    """
    work = [x.float() if x.dtype != torch.float64 else x for x in tensors]

    def batch_mean(*xs: Tensor) -> Tensor:
        prod = product_fn(*xs)
        return prod.reshape(prod.shape[0], -1).mean(dim=1).mean()

    with torch.no_grad():  # tensors, not Python bools: no device synchronisation
        inputs_finite = torch.stack([torch.isfinite(x).all() for x in work]).all()
        finite = torch.isfinite(batch_mean(*work)) & inputs_finite
    safe = [torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device)) for x in work]
    value = torch.nan_to_num(batch_mean(*safe), nan=0.0, posinf=0.0, neginf=0.0)
    return torch.where(inputs_finite, value, torch.full_like(value, torch.nan))


def consistency_regularizer(h1: Tensor, h2: Tensor, h_anchor: Tensor) -> Tensor:
    """Two-sample unbiased consistency estimator (``consistency_use_two_sample_unbiased``).

    ``L_cons = mean_B[ mean_{C,H,W}( (h1 - h_a) * (h2 - h_a) ) ]``. For ``h1, h2`` i.i.d. given
    ``x_t``, ``E[L_cons] = mean_{B,C,H,W} (E[h | x_t] - h_a)^2``. Gradients flow through ``h1``,
    ``h2`` and ``h_anchor`` (the anchor reuses the AC-loss forward and keeps its gradient). An
    overflowing value of finite inputs is replaced by 0, with zero gradient; non-finite inputs
    give NaN.

    Args:
        h1: x0-prediction of the fake score at ``(x'_1, tau')``, ``(B, ...)``.
        h2: same at ``(x'_2, tau')`` (independent CPS noise, same ``tau'``), ``(B, ...)``.
        h_anchor: ``h_a = x_t - t v_f(x_t, tau)``, ``(B, ...)``.

    Returns:
        Scalar (float32, or float64 for float64 inputs). It can be negative: it is an unbiased
        estimate of a non-negative quantity, not a square.
    """
    return _sanitised_mean(lambda a, b, c: (a - c) * (b - c), h1, h2, h_anchor)


def consistency_regularizer_one_sample(h1: Tensor, h_anchor: Tensor) -> Tensor:
    """Biased one-sample fallback ``mean_{B,C,H,W} (h1 - h_a)^2``.

    ``E = mean (E[h | x_t] - h_a)^2 + mean Var[h | x_t]``: it also penalises the spread of the
    hop, which the optimal fake score does not have to remove. nan/inf -> 0 as in
    :func:`consistency_regularizer`.

    Args:
        h1: x0-prediction at ``(x'_1, tau')``, ``(B, ...)``.
        h_anchor: anchor ``h_a``, ``(B, ...)``.

    Returns:
        Scalar, float32 (float64 for float64 inputs).
    """
    return _sanitised_mean(lambda a, c: (a - c).square(), h1, h_anchor)


__all__ = [
    'consistency_jump_sigma', 'consistency_regularizer', 'consistency_regularizer_one_sample',
]
