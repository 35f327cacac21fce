"""Log the steps the non-finite guard skipped, and stop a run that keeps skipping."""

from __future__ import annotations

from typing import Any

from mmengine.hooks import Hook

from rtdmd.engine.optim_wrappers import guarded_wrappers
from rtdmd.registry import HOOKS
from rtdmd.utils.errors import TrainingStopped


@HOOKS.register_module()
class NonFiniteGuardHook(Hook):
    """Counts iterations in which :class:`NonFiniteGuardOptimWrapper` skipped a step.

    Each skip is logged with its cause and the scalars ``nonfinite_skips/<role>`` (running total)
    go to the log and TensorBoard. After ``max_consecutive`` skipped iterations in a row the run
    stops with :class:`~rtdmd.utils.errors.TrainingStopped`, before the next checkpoint, so the
    last good checkpoint is the newest one on disk.

    Args:
        max_consecutive: stop after this many skipped iterations in a row (>= 1).
        require_guard: fail at the start of training when no optimizer wrapper is guarded (a
            config that sets ``type='OptimWrapper'`` would otherwise train unguarded silently).
    """

    priority = 'ABOVE_NORMAL'  # before the EMA (NORMAL) and checkpoint hooks read the result

    def __init__(self, max_consecutive: int = 10, require_guard: bool = True) -> None:
        if max_consecutive < 1:
            raise ValueError(f'max_consecutive must be >= 1, got {max_consecutive}')
        self.max_consecutive = max_consecutive
        self.require_guard = require_guard
        self.streak = 0
        self._seen: dict[str, int] = {}
        self._resumed: dict[str, int] = {}

    def before_train(self, runner: Any) -> None:
        wrappers = guarded_wrappers(runner)
        if self.require_guard and not wrappers:
            raise TrainingStopped(
                "no optimizer wrapper is guarded against non-finite steps: use "
                "type='NonFiniteGuardOptimWrapper' in optim_wrapper (the algorithm bases do), or "
                'set default_hooks.nonfinite.require_guard=False to train unguarded')
        for role, wrapper in wrappers.items():  # totals of a resumed run carry on
            wrapper.skipped_steps = int(self._resumed.get(role, wrapper.skipped_steps))
        self._seen = {role: w.skipped_steps for role, w in wrappers.items()}

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        skipped = []
        for role, wrapper in guarded_wrappers(runner).items():
            if wrapper.skipped_steps != self._seen.get(role, 0):
                skipped.append(f'{role} ({wrapper.last_skip_reason})')
                self._seen[role] = wrapper.skipped_steps
            runner.message_hub.update_scalar(f'train/nonfinite_skips/{role}',
                                             wrapper.skipped_steps)
        if not skipped:
            self.streak = 0
            return
        self.streak += 1
        runner.logger.warning(f'iter {runner.iter + 1}: skipped the optimizer step of '
                              f'{", ".join(skipped)}; {self.streak} skipped iteration(s) in a row '
                              f'(the run stops at {self.max_consecutive})')
        if self.streak >= self.max_consecutive:
            last = runner.message_hub.get_info('last_ckpt', None)
            raise TrainingStopped(
                f'stopped at iter {runner.iter + 1}: {self.streak} iterations in a row had a '
                f'non-finite loss, gradient or learning rate ({"; ".join(skipped)}). The skipped '
                f'steps changed no weights. Last good checkpoint: '
                f'{last or "none (no checkpoint was written yet)"}. Lower the learning rate or '
                f'check the rewards and inputs, then --resume')

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        checkpoint['nonfinite_guard'] = dict(
            streak=self.streak,
            skipped={role: w.skipped_steps for role, w in guarded_wrappers(runner).items()})

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        state = checkpoint.get('nonfinite_guard')
        if state is None or not getattr(runner, '_resume', False):
            return
        self.streak = int(state.get('streak', 0))
        self._resumed = dict(state.get('skipped', {}))
