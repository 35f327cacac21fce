"""An optimizer wrapper that never applies a non-finite step.

Both stages step their optimizers only through mmengine's ``OptimWrapper`` API (``backward``,
``step``, ``zero_grad``, or ``update_params`` which calls them), so the guard lives here and the
distillers need no change. Before ``step()`` it checks that every loss passed to ``backward``
since the last step, the total gradient norm and every learning rate are finite; if one is not,
the step is skipped: the optimizer (and so its moments and step count) is untouched and the
gradients are zeroed. Every skip is counted and remembered with its iteration, which
:class:`~rtdmd.engine.hooks.NonFiniteGuardHook` logs (stopping the run after too many in a row)
and :class:`~rtdmd.engine.hooks.TrainableEMAHook` reads to leave the EMA untouched too.

Under DDP the decision is all-reduced, so every rank skips together (gradients are already
averaged, but a loss can be inf on one rank only).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from mmengine.optim import OptimWrapper

from rtdmd.registry import OPTIM_WRAPPERS

__all__ = ['AmpGuardOptimWrapper', 'NonFiniteGuardOptimWrapper', 'guarded_wrappers',
           'iteration_skipped']


@OPTIM_WRAPPERS.register_module()
class NonFiniteGuardOptimWrapper(OptimWrapper):
    """``OptimWrapper`` that skips a step whose loss, gradient norm or learning rate is not finite.

    Args:
        optimizer: the optimizer.
        accumulative_counts: as ``OptimWrapper``.
        clip_grad: as ``OptimWrapper`` (e.g. ``dict(max_norm=1.0)``); the guard checks the norm
            before clipping, so a NaN gradient is never scaled into the weights.

    Attributes:
        role: the trainable role this wrapper steps (set by the optimizer constructor).
        sharded_net: the role's network when FSDP2 shards it (set by the optimizer
            constructor), else ``None``: its state is then gathered and loaded as full tensors
            (:func:`rtdmd.engine.fsdp.full_optimizer_state`).
        skipped_steps: number of steps skipped so far.
        last_skip_iter: the iteration (``runner.iter``) of the latest skipped step, or -1.
        last_skip_reason: what was not finite at that skip.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, accumulative_counts: int = 1,
                 clip_grad: dict | None = None) -> None:
        super().__init__(optimizer, accumulative_counts=accumulative_counts, clip_grad=clip_grad)
        self.role = ''
        self.sharded_net: torch.nn.Module | None = None
        self.skipped_steps = 0
        self.last_skip_iter = -1
        self.last_skip_reason = ''
        self._losses: list[torch.Tensor] = []

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        # Kept on the device and checked once in step(): no synchronisation per micro-batch.
        # Backward always runs: under DDP every rank must join the gradient all-reduce.
        self._losses.append(loss.detach().float().reshape(()))
        super().backward(loss, **kwargs)

    def step(self, **kwargs: Any) -> None:
        reason = self._non_finite_reason()
        if reason is None:
            super().step(**kwargs)
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.last_skip_iter = int(self.message_hub.get_info('iter', -1))
        self.last_skip_reason = reason
        name = getattr(self, 'grad_name', 'grad_norm')
        self.message_hub.update_scalar(f'train/{name}', float('nan'))  # logged as what it is

    def full_state_dict(self) -> dict:
        """``state_dict()`` with full tensors; under FSDP every rank must call it (rank 0 gets
        the state, the others an empty dict)."""
        if self.sharded_net is None:
            return self.state_dict()
        from rtdmd.engine.fsdp import full_optimizer_state

        return full_optimizer_state(self.sharded_net, self.optimizer)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a full state (written with any number of ranks); under FSDP each rank keeps
        its shards of it."""
        if self.sharded_net is None:
            super().load_state_dict(state_dict)
            return
        from rtdmd.engine.fsdp import load_full_optimizer_state

        state_dict = dict(state_dict)
        state_dict.pop('base_param_settings', None)
        load_full_optimizer_state(self.sharded_net, self.optimizer, state_dict)

    def zero_grad(self, **kwargs: Any) -> None:
        super().zero_grad(**kwargs)
        self._losses = []

    def _non_finite_reason(self) -> str | None:
        """What is not finite this step (None when all is well), agreed over ranks."""
        reasons = []
        if self._losses:
            losses = torch.stack(self._losses)
            bad = losses[~torch.isfinite(losses)]
            if bad.numel():
                reasons.append(f'loss is {float(bad[0])}')
        self._losses = []
        lrs = [g['lr'] for g in self.optimizer.param_groups]
        bad_lr = [lr for lr in lrs if not math.isfinite(float(lr))]
        if bad_lr:
            reasons.append(f'learning rate is {bad_lr[0]}')
        grads = [p.grad for g in self.optimizer.param_groups for p in g['params']
                 if p.grad is not None]
        if grads:
            norm = float(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])))
            if not math.isfinite(norm):
                reasons.append(f'gradient norm is {norm}')
        flag = torch.tensor(float(bool(reasons)))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = grads[0].device if grads and dist.get_backend() == 'nccl' else 'cpu'
            flag = flag.to(device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if float(flag) > 0 and not reasons:
            reasons.append('another rank had a non-finite loss or gradient')
        return '; '.join(reasons) or None


def guarded_wrappers(runner: Any) -> dict[str, NonFiniteGuardOptimWrapper]:
    """The runner's guarded optimizer wrappers by role (an ``OptimWrapperDict`` or a single one)."""
    wrapper = getattr(runner, 'optim_wrapper', None)
    if isinstance(wrapper, NonFiniteGuardOptimWrapper):
        return {wrapper.role or 'optim': wrapper}
    items = wrapper.items() if hasattr(wrapper, 'items') else []
    return {role: w for role, w in items if isinstance(w, NonFiniteGuardOptimWrapper)}


def iteration_skipped(runner: Any) -> bool:
    """True when a guarded wrapper skipped a step in the current iteration (``runner.iter``)."""
    return any(w.last_skip_iter == runner.iter for w in guarded_wrappers(runner).values())


@OPTIM_WRAPPERS.register_module()
class AmpGuardOptimWrapper(NonFiniteGuardOptimWrapper):
    """:class:`NonFiniteGuardOptimWrapper` whose forwards run under bf16 autocast (``--amp``).

    Kept instead of mmengine's ``AmpOptimWrapper`` for two reasons: it refuses to build without
    an accelerator (the CPU runs and tests could not use it), and its ``GradScaler`` does not
    mix with the guard (a step the guard skips never lets the scaler lower its scale). bf16 has
    fp32's exponent range, so it needs no loss scaling; float16 is refused for that reason.

    Args:
        optimizer, accumulative_counts, clip_grad: as :class:`NonFiniteGuardOptimWrapper`.
        dtype: the autocast dtype; only ``'bfloat16'``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, accumulative_counts: int = 1,
                 clip_grad: dict | None = None, dtype: str = 'bfloat16') -> None:
        if dtype != 'bfloat16':
            raise ValueError(f"AmpGuardOptimWrapper autocasts to 'bfloat16' only (float16 needs "
                             f'loss scaling), got {dtype!r}')
        super().__init__(optimizer, accumulative_counts=accumulative_counts, clip_grad=clip_grad)
        self.cast_dtype = torch.bfloat16

    @contextlib.contextmanager
    def optim_context(self, model: torch.nn.Module) -> Iterator[None]:
        params = [p for p in model.parameters()]
        device_type = params[0].device.type if params else 'cpu'
        with super().optim_context(model), torch.autocast(device_type, dtype=self.cast_dtype):
            yield
