"""EMA of the trainable parameters only (the teacher and frozen bases are never copied)."""

from __future__ import annotations

from typing import Any

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import Tensor

from rtdmd.engine.optim_wrappers import iteration_skipped
from rtdmd.functional.ema import ema_update_, ema_warmup_decay
from rtdmd.registry import HOOKS
from rtdmd.utils.sharding import full_tensor, like_param


@HOOKS.register_module()
class TrainableEMAHook(Hook):
    """Keeps an EMA of ``role``'s trainable parameters and swaps it in for val / test.

    Args:
        role: the backbone role to average (``'generator'``).
        decay: EMA decay (0.99 in the cold start).
        interval: update every this many iterations.
        warmup: use the warm-up decay ``min((1 + s) / (10 + s), decay)`` (the RL stage's).
        begin_iter: first iteration that updates the EMA.
        sub_batches: the release's stage-2 cadence when > 1 (ALGORITHM.md 4.8): it calls its EMA
            after each of an epoch's ``sub_batches`` backward passes with the epoch counter
            ``s`` gating (``(s + 1) % interval == 0``), and ``s`` moves on only at the last one.
            So in a gated epoch the EMA is pulled ``sub_batches - 1`` times towards the weights
            before the optimizer step (decay of ``s``), and once more after the step of the
            epoch before a gated one (decay of ``s + 1``). 1: one pull per gated iteration,
            after its step.

    The EMA lives in the checkpoint under ``'ema_state'`` (parameter name -> tensor). It starts
    from the live weights in ``before_train``, after the Runner has initialised the model
    (``init_weights``, e.g. a stage-2 warm start) and loaded a checkpoint: a resumed EMA is kept.
    An iteration whose optimizer step the non-finite guard skipped leaves the EMA untouched.
    """

    priority = 'NORMAL'

    def __init__(self, role: str = 'generator', decay: float = 0.99, interval: int = 1,
                 warmup: bool = False, begin_iter: int = 0, sub_batches: int = 1) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f'decay must lie in [0, 1), got {decay}')
        if sub_batches < 1 or interval < 1:
            raise ValueError(f'sub_batches and interval must be >= 1, got {sub_batches}, '
                             f'{interval}')
        self.sub_batches = sub_batches
        self.role = role
        self.decay = decay
        self.interval = interval
        self.warmup = warmup
        self.begin_iter = begin_iter
        self.ema: dict[str, Tensor] = {}
        self._backup: dict[str, Tensor] = {}

    def _params(self, runner: Any) -> dict[str, torch.nn.Parameter]:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        net = getattr(model.backbone, self.role)
        return {n: p for n, p in net.named_parameters() if p.requires_grad}

    def _ensure_initialised(self, runner: Any) -> None:
        if not self.ema:
            self.ema = {n: p.detach().clone() for n, p in self._params(runner).items()}

    def before_train(self, runner: Any) -> None:
        # Not before_run: the model's init_weights (a stage-2 warm start) runs after it, and a
        # resumed EMA (after_load_checkpoint) must not be overwritten.
        self._ensure_initialised(runner)

    def _decay(self, step: int) -> float:
        return ema_warmup_decay(step, self.decay) if self.warmup else self.decay

    def _pull(self, runner: Any, decay: float) -> None:
        params = self._params(runner)
        ema_update_([self.ema[n] for n in params], list(params.values()), decay)

    def _gated(self, step: int) -> bool:
        return step >= self.begin_iter and (step + 1) % self.interval == 0

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        step = runner.iter
        if self.sub_batches > 1 and self._gated(step):
            # sub_batches - 1 pulls towards the same pre-step weights: decay ** (n - 1) at once
            self._pull(runner, self._decay(step) ** (self.sub_batches - 1))

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        step = runner.iter  # iterations finished before this one
        if iteration_skipped(runner):
            return
        if self.sub_batches == 1 and self._gated(step):
            self._pull(runner, self._decay(step))
        elif self.sub_batches > 1 and self._gated(step + 1):  # the epoch counter has moved on
            self._pull(runner, self._decay(step + 1))

    def swap(self, runner: Any) -> None:
        """Exchange live and EMA weights (call twice to undo)."""
        self._ensure_initialised(runner)  # a test of an untrained model has no EMA yet
        with torch.no_grad():
            for name, param in self._params(runner).items():
                live = param.detach().clone()
                param.copy_(self.ema[name])
                self.ema[name] = live

    def before_val_epoch(self, runner: Any) -> None:
        self.swap(runner)

    def after_val_epoch(self, runner: Any, metrics: dict | None = None) -> None:
        self.swap(runner)

    def before_test_epoch(self, runner: Any) -> None:
        self.swap(runner)

    def after_test_epoch(self, runner: Any, metrics: dict | None = None) -> None:
        self.swap(runner)

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        # Under FSDP rank 0 alone writes, after full_checkpoint_state gathered (the
        # checkpoint hook replaces this rank's shards by the full tensors).
        checkpoint['ema_state'] = {n: t.cpu() for n, t in self.ema.items()}

    def full_checkpoint_state(self, runner: Any) -> dict:
        """The EMA as full tensors (a sharded run gathers its shards; every rank calls it)."""
        return {'ema_state': {n: full_tensor(t).cpu() for n, t in self.ema.items()}}

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        state = checkpoint.get('ema_state')
        if state is None:
            runner.logger.warning('checkpoint has no ema_state: the EMA restarts from the '
                                  'loaded weights')
            self.ema = {}
            return
        params = self._params(runner)
        missing = set(params) - set(state)
        if missing:
            raise KeyError(f'ema_state in the checkpoint lacks {sorted(missing)[:5]}')
        # A full tensor per name (any rank count's); a sharded run keeps this rank's shard.
        self.ema = {n: like_param(state[n].to(p.dtype), p).clone() for n, p in params.items()}
