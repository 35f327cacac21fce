"""Distribution-matching (DMD) gradient and its surrogate loss.

ALGORITHM.md section 2.1 (and 3.2, where the predictions are s-level CPS samples instead of x0).
With real / fake predictions of the same target (``x0_r``, ``x0_f``)::

    g = (x - x0_r) - (x - x0_f) = x0_f - x0_r
    g <- g / mean_{C,H,W} |x - x0_r|            (per sample, ``normalize=True``)
    L = 1/2 mean((x - sg(x - g))^2)             so  dL/dx = g / numel(x)

A gradient-descent step on ``L`` moves ``x`` along ``x0_r - x0_f``: toward where the teacher
points and away from the generator's own (fake) distribution.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .flow import append_dims


def dmd_gradient(x: Tensor, pred_fake: Tensor, pred_real: Tensor, normalize: bool = True) -> Tensor:
    """DMD gradient ``g = pred_fake - pred_real``, optionally normalised per sample.

    With ``normalize``: ``g_b <- g_b / mean_{non-batch} |x_b - pred_real_b|`` followed by
    ``nan_to_num`` (as the release does), so a degenerate normalisation of finite input
    (``x == pred_real``: 0 / 0 -> 0; overflow -> the dtype's largest finite value) gives a
    finite gradient. A sample whose inputs are *not* finite (a diverged generator, teacher or fake
    score) gets a NaN gradient instead of a silent zero, so the loss shows it and the optimizer
    guard skips the step.

    The gradient is a fixed target, not a function to differentiate: it is computed under
    ``torch.no_grad()`` and never carries autograd history, even when ``x`` does (callers
    normally pass detached tensors; this makes forgetting to detach harmless).

    Args:
        x: generator sample, ``(B, ...)``.
        pred_fake: fake-score prediction of the same quantity, ``(B, ...)``.
        pred_real: teacher prediction, ``(B, ...)``.
        normalize: divide by the per-sample mean absolute error of the teacher prediction.

    Returns:
        ``g``, shape and dtype of ``x``. Arithmetic is at least float32.
    """
    if not x.shape == pred_fake.shape == pred_real.shape:
        raise ValueError(
            f'shape mismatch: x {tuple(x.shape)}, pred_fake '
            f'{tuple(pred_fake.shape)}, pred_real {tuple(pred_real.shape)}'
        )
    work = torch.promote_types(x.dtype, torch.float32)
    with torch.no_grad():
        xw, fake, real = x.to(work), pred_fake.to(work), pred_real.to(work)
        grad = fake - real
        if normalize:
            # The mean over all non-batch dims (C, H, W for images) is a per-sample scale that
            # makes the step size independent of how far the sample is from the teacher.
            scale = (xw - real).abs().flatten(1).mean(dim=1)
            grad = torch.nan_to_num(grad / append_dims(scale, grad.ndim))
            finite = torch.stack([torch.isfinite(t).flatten(1).all(dim=1)
                                  for t in (xw, fake, real)]).all(dim=0)
            grad = torch.where(append_dims(finite, grad.ndim), grad, torch.nan)
        return grad.to(x.dtype)


def dmd_surrogate_loss(x: Tensor, grad: Tensor) -> Tensor:
    """Surrogate loss whose gradient w.r.t. ``x`` is ``grad / numel(x)``.

    ``L = 1/2 mean((x - sg(x - grad))^2)``; its value is ``1/2 mean(grad^2)``. Computed in
    float64 so that the subtraction ``x - (x - grad)`` returns ``grad`` without the rounding a
    low-precision ``x`` would add (the release does the same).

    Args:
        x: generator sample with autograd history, ``(B, ...)``.
        grad: DMD gradient from :func:`dmd_gradient`, same shape (treated as a constant).

    Returns:
        float64 scalar.
    """
    if x.shape != grad.shape:
        raise ValueError(f'shape mismatch: x {tuple(x.shape)}, grad {tuple(grad.shape)}')
    x64 = x.to(torch.float64)
    target = (x64 - grad.to(torch.float64)).detach()
    return 0.5 * (x64 - target).pow(2).mean()


__all__ = ['dmd_gradient', 'dmd_surrogate_loss']
