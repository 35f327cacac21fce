"""Save and restore the global random states with every checkpoint."""

from __future__ import annotations

from typing import Any

from mmengine.hooks import Hook

from rtdmd.registry import HOOKS
from rtdmd.utils.rng import global_rng_states, set_global_rng_states


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Puts Python's, NumPy's and torch's (CPU and CUDA) global RNG states into checkpoints.

    rtdmd's own draws come from counter-based streams (:mod:`rtdmd.utils.rng`) and need no
    state; this covers anything else that uses the global generators (data augmentation,
    third-party code). Checkpoints are written by rank 0, so rank 0 restores its states on
    resume; other ranks keep the seeds they were started with.
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        checkpoint['rng_state'] = global_rng_states()

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        state = checkpoint.get('rng_state')
        if state is None or runner.rank != 0 or not getattr(runner, '_resume', False):
            return  # only an exact resume restores the random state, not a weight load
        set_global_rng_states(state)
