"""Sigma schedules: static and exponential shifts, FLUX mu rules, sigma sampling, model units.

ALGORITHM.md section 1.2. A few-step schedule starts from ``denoising_step_list`` (e.g.
``[1000, 750, 500, 250]``), takes the raw value ``u = step / 1000`` and shifts it into sigma:

- static shift (SD3 / SD3.5, ``shift = 3``): ``sigma = shift u / (1 + (shift - 1) u)``;
- exponential time shift (FLUX.1, FLUX.2): ``sigma = e^mu / (e^mu + 1/u - 1)``, with ``mu`` from
  :func:`flux_dynamic_mu` (FLUX.1) or :func:`flux2_empirical_mu` (FLUX.2-klein).

The static shift is the exponential one with ``mu = log(shift)``. A trailing ``sigma = 0`` closes
the schedule. Sigma is the continuous, already shifted value in [0, 1]; the model timestep is
``1000 sigma`` (:func:`sigma_to_timestep`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from .flow import SigmaLike

# FLUX.2-klein "empirical mu" (diffusers Flux2KleinPipeline): mu is linear in the token count at
# num_steps = 10 (m10) and at num_steps = 200 (m200) and linearly interpolated between them.
_FLUX2_A1, _FLUX2_B1 = 8.738e-5, 1.8983
_FLUX2_A2, _FLUX2_B2 = 1.6927e-4, 0.45667
_FLUX2_MAX_TOKENS_FOR_STEP_DEPENDENCE = 4300


def _as_float_tensor(value: SigmaLike | Sequence[float]) -> Tensor:
    """``value`` as a floating tensor; Python numbers and integer tensors become float64."""
    if not isinstance(value, Tensor):
        # torch.as_tensor would pick the default float32 for Python floats.
        return torch.as_tensor(value, dtype=torch.float64)
    return value if value.is_floating_point() else value.to(torch.float64)


def shift_sigmas(u: SigmaLike, shift: float) -> Tensor:
    """Static (SD3) timestep shift ``sigma = shift u / (1 + (shift - 1) u)``.

    Maps 0 -> 0 and 1 -> 1 exactly and is monotone; ``shift > 1`` moves mass toward high noise.

    Args:
        u: un-shifted sigma in [0, 1], float or tensor of any shape.
        shift: shift factor, ``> 0`` (``shift = 1`` is the identity).

    Returns:
        Shifted sigma, same shape as ``u`` (float64 for Python / integer input).
    """
    if shift <= 0:
        raise ValueError(f'shift must be > 0, got {shift}')
    u = _as_float_tensor(u)
    return shift * u / (1 + (shift - 1) * u)


def time_shift_exponential(u: SigmaLike, mu: SigmaLike) -> Tensor:
    """Exponential (FLUX) time shift ``sigma = e^mu / (e^mu + 1/u - 1)``.

    Evaluated as ``e^mu u / (e^mu u + 1 - u)``, the same function multiplied through by ``u``,
    so ``u = 0`` gives exactly 0 (the literal form divides by zero) and ``u = 1`` gives exactly 1.
    ``mu = 0`` is the identity; ``mu = log(shift)`` is :func:`shift_sigmas`.

    Args:
        u: un-shifted sigma in [0, 1], float or tensor.
        mu: log shift, float or tensor broadcastable to ``u``.

    Returns:
        Shifted sigma, the broadcast shape of ``u`` and ``mu``.
    """
    u = _as_float_tensor(u)
    e_mu = torch.exp(torch.as_tensor(mu, dtype=u.dtype, device=u.device))
    return e_mu * u / (e_mu * u + (1 - u))


def flux_dynamic_mu(
    num_tokens: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """FLUX.1 dynamic-shift ``mu``, linear in the number of packed image tokens ``L``.

    ``mu = base_shift + (L - base_seq_len) * slope`` with
    ``slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)``.
    ``L = 1024`` (512 px) gives 0.63 and ``L = 4096`` (1024 px) gives 1.15.
    """
    if max_seq_len == base_seq_len:
        raise ValueError('max_seq_len and base_seq_len must differ')
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + (num_tokens - base_seq_len) * slope


def flux2_empirical_mu(num_tokens: int, num_steps: int) -> float:
    """FLUX.2-klein empirical ``mu``, depending on token count ``L`` and step count ``n``.

    ``m200 = a2 L + b2``, ``m10 = a1 L + b1``; ``mu = m200 + (n - 200)(m200 - m10) / 190`` for
    ``L <= 4300`` and ``mu = m200`` above (a1 = 8.738e-5, b1 = 1.8983, a2 = 1.6927e-4,
    b2 = 0.45667). ``L = 1024, n = 4`` gives about 2.031.
    """
    m200 = _FLUX2_A2 * num_tokens + _FLUX2_B2
    if num_tokens > _FLUX2_MAX_TOKENS_FOR_STEP_DEPENDENCE:
        return m200
    m10 = _FLUX2_A1 * num_tokens + _FLUX2_B1
    return m200 + (num_steps - 200) * (m200 - m10) / 190.0


def step_list_to_sigmas(
    step_list: Sequence[float] | Tensor,
    shift: float | None = None,
    mu: float | None = None,
    num_train_timesteps: int = 1000,
    append_zero: bool = True,
) -> Tensor:
    """Few-step sigma schedule from a ``denoising_step_list``.

    ``u_k = step_k / num_train_timesteps``, then ``sigma_k = shift_sigmas(u_k, shift)`` or
    ``time_shift_exponential(u_k, mu)`` (at most one of them; neither leaves ``u`` unchanged),
    then a trailing 0. E.g. ``[1000, 750, 500, 250]`` with ``shift = 3`` gives
    ``[1.0, 0.9, 0.75, 0.5, 0.0]``.

    Args:
        step_list: ``K`` raw steps in ``[0, num_train_timesteps]``.
        shift: static shift factor (SD3), or ``None``.
        mu: exponential-shift log factor (FLUX), or ``None``.
        num_train_timesteps: scale of ``step_list``.
        append_zero: append the final ``sigma = 0``.

    Returns:
        float32 tensor ``(K + 1,)`` (``(K,)`` without ``append_zero``), on the device of
        ``step_list`` when it is a tensor.
    """
    if shift is not None and mu is not None:
        raise ValueError('pass at most one of `shift` (static) and `mu` (exponential)')
    # The algebra runs in float64 so that the float32 result is correctly rounded.
    u = torch.as_tensor(step_list).to(torch.float64).reshape(-1) / num_train_timesteps
    if bool(((u < 0) | (u > 1)).any()):
        raise ValueError(f'steps must lie in [0, {num_train_timesteps}], got {step_list}')
    if shift is not None:
        sigmas = shift_sigmas(u, shift)
    elif mu is not None:
        sigmas = time_shift_exponential(u, mu)
    else:
        sigmas = u
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(torch.float32)


def sample_sigmas(
    batch_size: int,
    mode: Literal['uniform', 'logit_normal'] = 'uniform',
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    low: float = 0.0,
    high: float = 1.0,
) -> Tensor:
    """Draw one training sigma per sample.

    ``'uniform'``: ``sigma ~ U[low, high]``. ``'logit_normal'``:
    ``sigma = low + (high - low) sigmoid(n)``, ``n ~ N(logit_mean, logit_std^2)``, so the
    median is ``low + (high - low) sigmoid(logit_mean)``.

    Args:
        batch_size: ``B``.
        mode: ``'uniform'`` or ``'logit_normal'``.
        generator: optional RNG; it must live on ``device``.
        device: device of the result.
        logit_mean: mean of the logit for ``'logit_normal'``.
        logit_std: std of the logit for ``'logit_normal'``, ``>= 0``.
        low: lower end of the range, ``0 <= low <= high``.
        high: upper end of the range, ``high <= 1``.

    Returns:
        float32 tensor ``(B,)``.
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f'need 0 <= low <= high <= 1, got low={low}, high={high}')
    if mode == 'uniform':
        r = torch.rand(batch_size, generator=generator, device=device)
    elif mode == 'logit_normal':
        if logit_std < 0:
            raise ValueError(f'logit_std must be >= 0, got {logit_std}')
        n = torch.randn(batch_size, generator=generator, device=device)
        r = torch.sigmoid(logit_mean + logit_std * n)
    else:
        raise ValueError(f"mode must be 'uniform' or 'logit_normal', got {mode!r}")
    return low + (high - low) * r


def sigma_to_timestep(sigma: SigmaLike, scale: float = 1000.0) -> SigmaLike:
    """Model timestep ``t = scale * sigma`` (SD3 takes ``1000 sigma``; FLUX rescales inside)."""
    return sigma * scale


def timestep_to_sigma(t: SigmaLike, scale: float = 1000.0) -> SigmaLike:
    """Inverse of :func:`sigma_to_timestep`: ``sigma = t / scale``."""
    return t / scale


__all__ = [
    'shift_sigmas',
    'time_shift_exponential',
    'flux_dynamic_mu',
    'flux2_empirical_mu',
    'step_list_to_sigmas',
    'sample_sigmas',
    'sigma_to_timestep',
    'timestep_to_sigma',
]
