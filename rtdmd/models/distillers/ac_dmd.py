"""Stage 1: AC-DMD (and plain DMD2 as a configuration of it).

Per iteration (ALGORITHM.md section 3.5): one fake-score update, every ``fake_update_ratio``
iterations one generator update, each on its own fresh rollout. Where the generator is matched
is the injected matching component: :class:`~rtdmd.models.distillers.matching.RandomStopMatching`
on the sub-interval ``[s, 1]`` of the last executed step (AC-DMD) or on the clean output
(``sub_interval=False``, DMD2); :class:`~rtdmd.models.distillers.matching.FinalStepMatching`
without random stop.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmengine.optim import OptimWrapperDict
from torch import Tensor

from rtdmd.registry import LOSSES, MODELS

from .base import DistillerBase


@MODELS.register_module()
class ACDMDDistiller(DistillerBase):
    """Ambient-consistent DMD distiller of a few-step CPS generator.

    Args:
        backbone: backbone config (builds teacher, generator and fake score).
        sampler: few-step sampler config (``CPSSampler``: step list, eta).
        matching: the distribution-matching component (``RandomStopMatching`` or
            ``FinalStepMatching``): the fake score's objective, the generator's DMD term and
            where it is taken; it must have a ``dmd_loss``.
        fake_update_ratio: one generator update every this many fake-score updates.
        init_checkpoint, fresh_lora_std, seed, eval_seed: see :class:`DistillerBase`.
    """

    def __init__(self, backbone: dict, sampler: dict, matching: dict,
                 fake_update_ratio: int = 10, init_checkpoint: str | None = None,
                 fresh_lora_std: float | None = None, seed: int = 0, eval_seed: int = 42,
                 data_preprocessor: dict | None = None) -> None:
        super().__init__(backbone=backbone, sampler=sampler, init_checkpoint=init_checkpoint,
                         fresh_lora_std=fresh_lora_std, seed=seed, eval_seed=eval_seed,
                         data_preprocessor=data_preprocessor)
        if fake_update_ratio < 1:
            raise ValueError(f'fake_update_ratio must be >= 1, got {fake_update_ratio}')
        self.matching = LOSSES.build(matching)
        if self.matching.dmd_loss is None:
            raise ValueError('stage 1 trains the generator by distribution matching: '
                             'model.matching needs a dmd_loss')
        self.fake_update_ratio = fake_update_ratio

    def train_step(self, data: dict | Sequence, optim_wrapper: OptimWrapperDict
                   ) -> dict[str, Tensor]:
        data = self.data_preprocessor(data, True)
        cond = self.backbone.encode_prompts(data['prompt'])
        step = int(self.iteration)
        fake = self.context(cond, step, 'fake')
        log_vars = self._update('fake_score', lambda: self.matching.fake_losses(fake),
                                optim_wrapper)
        if (step + 1) % self.fake_update_ratio == 0:
            gen = self.context(cond, step, 'generator')
            log_vars.update(self._update(
                'generator', lambda: {'loss_dmd': self.matching.own_rollout_loss(gen)},
                optim_wrapper))
        self.iteration += 1
        return log_vars
