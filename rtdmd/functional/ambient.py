"""AC-DMD sub-interval renoising, the ambient fake-score target and its loss weight.

ALGORITHM.md sections 3.1-3.3. The generator's last executed step produces ``x_s``, a *noisy*
CPS sample at level ``s`` (``s = 0`` only for the final step). Distribution matching and the
fake-score regression happen at a level ``t`` in ``(s, 1]`` reached with the exact Gaussian kernel
of the interpolant ``x_sigma = (1 - sigma) x0 + sigma eps``::

    a = (1 - t) / (1 - s) ;  sigma_ts = sqrt(max(t^2 - a^2 s^2, 1e-12)) ;  x_t = a x_s + sigma_ts z

If ``x_s ~ (1 - s) x0 + s eps`` then ``x_t ~ (1 - t) x0 + t eps'`` (same ``x0``, ``eps'`` standard
normal), so every function here reduces to plain flow matching / DMD at ``s = 0``.

``s`` and ``t`` are Python floats or per-sample ``(B,)`` tensors that broadcast over the trailing
dimensions of a sample ``(B, ...)``. Sample arithmetic is float32 (float64 inputs stay float64);
results are cast back to the dtype of the sample.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .flow import SigmaLike, append_dims

# Floor under sigma_ts^2: t^2 - a^2 s^2 = (t - s)(...) vanishes as t -> s, and the ambient target
# divides by sigma_ts. The release uses the same constant.
_MIN_SIGMA_TS_SQ = 1e-12


def _work_dtype(*values: SigmaLike) -> torch.dtype:
    """float64 if any tensor argument is float64, float32 otherwise (bf16/fp16 are upcast)."""
    is64 = any(isinstance(v, Tensor) and v.dtype == torch.float64 for v in values)
    return torch.float64 if is64 else torch.float32


def _device(*values: SigmaLike) -> torch.device | None:
    for v in values:
        if isinstance(v, Tensor):
            return v.device
    return None


def _kernel_coefficients(s: SigmaLike, t: SigmaLike, dtype: torch.dtype,
                         device: torch.device | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(s, t, a, sigma_ts)`` as tensors of ``dtype``: 0-d for floats, ``(B,)`` per sample."""
    s_t = torch.as_tensor(s, dtype=dtype, device=device)
    t_t = torch.as_tensor(t, dtype=dtype, device=device)
    a = (1 - t_t) / (1 - s_t)
    sigma_ts = torch.sqrt(torch.clamp(t_t.square() - a.square() * s_t.square(),
                                      min=_MIN_SIGMA_TS_SQ))
    return s_t, t_t, a, sigma_ts


def sub_interval_std(s: SigmaLike, t: SigmaLike) -> Tensor:
    """Std of the forward kernel from level ``s`` to level ``t > s``.

    ``sigma_ts = sqrt(max(t^2 - a^2 s^2, 1e-12))`` with ``a = (1 - t) / (1 - s)``; it makes
    ``a^2 s^2 + sigma_ts^2 = t^2``, the noise variance of the flow marginal at ``t``.

    Args:
        s: start level in [0, 1), float or ``(B,)``.
        t: target level in (s, 1], float or ``(B,)``.

    Returns:
        ``sigma_ts``: 0-d for two floats, else the broadcast shape of ``s`` and ``t`` (``(B,)``).
        float64 if an input is float64, float32 otherwise.
    """
    return _kernel_coefficients(s, t, _work_dtype(s, t), _device(s, t))[3]


def renoise_sub_interval(x_s: Tensor, s: SigmaLike, t: SigmaLike,
                         noise: Tensor) -> tuple[Tensor, Tensor]:
    """Forward-noise an ambient sample from level ``s`` to level ``t`` (ALGORITHM.md 3.1 step 3).

    ``x_t = a x_s + sigma_ts z`` with ``a = (1 - t) / (1 - s)`` and ``sigma_ts`` from
    :func:`sub_interval_std`. Differentiable in ``x_s`` (the generator's last step keeps grad).

    Args:
        x_s: ambient sample at level ``s``, ``(B, ...)``.
        s: level of ``x_s``, float or ``(B,)``, in [0, 1).
        t: renoise level, float or ``(B,)``, in (s, 1].
        noise: standard normal ``z`` shaped like ``x_s``.

    Returns:
        ``(x_t, sigma_ts)``: ``x_t`` shaped and typed like ``x_s``; ``sigma_ts`` 0-d or ``(B,)``
        in the working precision (float32, or float64 for float64 samples).
    """
    work = torch.float64 if x_s.dtype == torch.float64 else torch.float32
    _, _, a, sigma_ts = _kernel_coefficients(s, t, work, x_s.device)
    x_t = append_dims(a, x_s.ndim) * x_s.to(work) + append_dims(sigma_ts, x_s.ndim) * noise.to(work)
    return x_t.to(x_s.dtype), sigma_ts


def sample_renoise_sigma(s: SigmaLike, u: Tensor, offset: float = 10.0, end: float = 1000.0,
                         min_step: float = 20.0, max_step: float = 980.0,
                         num_train_timesteps: float = 1000.0) -> Tensor:
    """Map uniform draws to the AC-DMD renoise level ``t`` (ALGORITHM.md 3.1 step 2).

    In model-timestep units ``tau ~ U[N s + offset, end]`` with ``N = num_train_timesteps``, i.e.
    ``tau = lo + u (end - lo)``, ``lo = N s + offset``; then
    ``tau <- clamp(tau, min_step, min(max_step, N - 1))`` and ``t = tau / N``. ``t`` is continuous
    and uniform in the already-shifted sigma space (no extra shift, ALGORITHM.md 9.3). The caller
    passes ``min_step = max(min_renoise_step, dmd.min_step)`` and likewise for ``max_step``.

    ``tau`` is non-decreasing in both ``u`` and ``s``. ``t > s`` holds whenever
    ``N s < min(max_step, N - 1)``; at the recipes' sigma lists (``s <= 0.967``) it always does.

    Args:
        s: level of the ambient sample, float or ``(B,)``.
        u: uniform draws in [0, 1), ``(B,)``; the randomness of this function.
        offset: gap ``tau - N s`` at ``u = 0``, in timestep units.
        end: upper end of the uniform range, in timestep units.
        min_step: lower clamp, in timestep units.
        max_step: upper clamp, in timestep units (further capped at ``N - 1``).
        num_train_timesteps: ``N``, the model-timestep scale.

    Returns:
        ``t`` in sigma units, ``(B,)``, in the floating dtype of ``u`` (float32 at least).
        The model timestep is ``N t``.
    """
    dtype = u.dtype if u.dtype == torch.float64 else torch.float32
    s_t = torch.as_tensor(s, dtype=dtype, device=u.device)
    lo = num_train_timesteps * s_t + offset
    tau = lo + u.to(dtype) * (end - lo)
    tau = torch.clamp(tau, min=min_step, max=min(max_step, num_train_timesteps - 1))
    return tau / num_train_timesteps


def ambient_target(x_s: Tensor, s: SigmaLike, t: SigmaLike, noise: Tensor) -> Tensor:
    """Ambient fake-score regression target, unbiased for the marginal velocity at ``t``.

    ALGORITHM.md 3.3. With ``x_t = a x_s + sigma_ts z`` (the same ``z`` as
    :func:`renoise_sub_interval`)::

        T = -x_s / (1 - s) + B z ,   B = [t + (1 - t) s^2 / (1 - s)^2] / sigma_ts

    ``E[T | x_t] = v_t(x_t) = (E[eps | x_t] - x_t) / (1 - t)``, by Tweedie on the
    ``x_s -> x_t`` kernel (``E[eps | x_t] = (t / sigma_ts) E[z | x_t]``). With ``s = 0`` it is
    exactly ``z - x0``, the flow-matching target.

    Args:
        x_s: ambient sample at level ``s``, ``(B, ...)``.
        s: level of ``x_s``, float or ``(B,)``, in [0, 1).
        t: renoise level, float or ``(B,)``, in (s, 1].
        noise: the ``z`` used to build ``x_t``, shaped like ``x_s``.

    Returns:
        ``T`` shaped and typed like ``x_s``.
    """
    work = torch.float64 if x_s.dtype == torch.float64 else torch.float32
    s_t, t_t, _, sigma_ts = _kernel_coefficients(s, t, work, x_s.device)
    coef_z = (t_t + (1 - t_t) * s_t.square() / (1 - s_t).square()) / sigma_ts
    target = (-x_s.to(work) / append_dims(1 - s_t, x_s.ndim)
              + append_dims(coef_z, x_s.ndim) * noise.to(work))
    return target.to(x_s.dtype)


def ambient_loss_weight(sigma_ts: Tensor, move_scale_out: bool = True,
                        max_weight: float = 10.0) -> Tensor:
    """Per-sample weight on the plain velocity MSE of the ambient DSM loss.

    The release (``target_formula_move_scale_out: true``) scales prediction and target by
    ``sigma_ts`` and weights by ``clamp(1 / sigma_ts^2, 0, max_weight)`` (nan -> 0, inf -> max).
    On the plain MSE ``(v - T)^2`` that is ``w = min(1, max_weight sigma_ts^2)``: near-singular
    sub-intervals (``sigma_ts^2 < 1 / max_weight``) are down-weighted, ``sigma_ts = 0`` gives 0
    and a nan ``sigma_ts`` gives 0. With ``move_scale_out = False`` the weight is 1.

    Args:
        sigma_ts: kernel std, ``(B,)``.
        move_scale_out: the release's flag; False gives unit weights.
        max_weight: clamp on ``1 / sigma_ts^2``.

    Returns:
        ``w``, shaped like ``sigma_ts`` (``(B,)``), float32 at least.
    """
    sigma_ts = sigma_ts.to(torch.promote_types(sigma_ts.dtype, torch.float32))
    if not move_scale_out:
        return torch.ones_like(sigma_ts)
    weight = torch.clamp(max_weight * sigma_ts.square(), max=1.0)
    return torch.nan_to_num(weight, nan=0.0)


def ambient_dsm_loss(v_pred: Tensor, target: Tensor, sigma_ts: Tensor,
                     move_scale_out: bool = True, max_weight: float = 10.0) -> Tensor:
    """Ambient DSM loss of the fake score, ALGORITHM.md 3.3.

    ``L_ac = mean_{B, C, H, W}[ w_b (v_pred - T)^2 ]`` with ``w = ambient_loss_weight(sigma_ts)``.
    The target is a regression constant: it is detached, so no gradient reaches whatever produced
    ``x_s``. Computed in float32 (float64 stays float64).

    Args:
        v_pred: fake-score velocity at ``(x_t, t)``, ``(B, ...)``.
        target: ``T`` from :func:`ambient_target`, same shape.
        sigma_ts: kernel std, ``(B,)`` (or 0-d, applied to every sample).
        move_scale_out: see :func:`ambient_loss_weight`.
        max_weight: see :func:`ambient_loss_weight`.

    Returns:
        Scalar loss.
    """
    work = torch.float64 if v_pred.dtype == torch.float64 else torch.float32
    weight = ambient_loss_weight(sigma_ts, move_scale_out, max_weight).to(work)
    sq = (v_pred.to(work) - target.detach().to(work)).square()
    return (append_dims(weight, sq.ndim) * sq).mean()


__all__ = [
    'sub_interval_std', 'renoise_sub_interval', 'sample_renoise_sigma', 'ambient_target',
    'ambient_loss_weight', 'ambient_dsm_loss',
]
