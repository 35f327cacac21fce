"""Parameter-level EMA of the trainable (LoRA) parameters (ALGORITHM.md 2.3, 4.8, 9.18).

``ema <- decay * ema + (1 - decay) * p``. Stage 2 uses the warm-up decay
``min((1 + s) / (10 + s), max_decay)``; the cold start a constant 0.99. When to call the update
(every step, or every 8th) is the hook's business, not this module's.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def ema_warmup_decay(step: int, max_decay: float = 0.9) -> float:
    """Warm-up EMA decay ``min((1 + step) / (10 + step), max_decay)``.

    Starts at 0.1 (step 0), so the early EMA follows the weights closely, and reaches
    ``max_decay = 0.9`` at step 80.

    Args:
        step: optimizer step count ``s >= 0`` (``grpo_global_step`` at call time).
        max_decay: upper bound of the decay.

    Returns:
        The decay, a Python float.
    """
    if step < 0:
        raise ValueError(f'step must be >= 0, got {step}')
    return min((1 + step) / (10 + step), max_decay)


@torch.no_grad()
def ema_update_(ema_params: Iterable[Tensor], params: Iterable[Tensor], decay: float) -> None:
    """In-place EMA update ``ema <- decay * ema + (1 - decay) * p`` for each pair.

    Implemented as ``ema.lerp_(p, 1 - decay)`` (``torch._foreach_lerp_``: one fused launch for
    all LoRA tensors). ``p`` is cast to the EMA tensor's dtype and device first, so an fp32 EMA
    of bf16 weights keeps its precision.

    Args:
        ema_params: EMA tensors, updated in place.
        params: current parameters, in the same order and with the same shapes.
        decay: in [0, 1]; 1 keeps the EMA, 0 copies the parameters.

    Raises:
        ValueError: on a length mismatch or a decay outside [0, 1].
    """
    ema_list = list(ema_params)
    param_list = list(params)
    if len(ema_list) != len(param_list):
        raise ValueError(f'{len(ema_list)} EMA tensors but {len(param_list)} parameters')
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f'decay must lie in [0, 1], got {decay}')
    if not ema_list:
        return
    sources = [p.detach().to(dtype=e.dtype, device=e.device)
               for e, p in zip(ema_list, param_list, strict=True)]
    torch._foreach_lerp_(ema_list, sources, 1.0 - decay)


__all__ = ['ema_warmup_decay', 'ema_update_']
