"""What loss components see: one update's context, and one step of the stage-2 rollout.

Stage 2's generator objective is a set of injected terms (``RTDMDDistiller(terms=...)`` and the
matching component). Each term declares which steps of the epoch's stored rollout it reads
(:meth:`GeneratorTerm.steps`); the distiller runs one generator forward per such step and hands
every term that asked for it a :class:`StepView`. A term that reads no stored step makes a
rollout of its own from the :class:`UpdateContext` (:meth:`GeneratorTerm.own_rollout_loss`: the
random-stop distribution matching of stage 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn

from rtdmd.functional.flow import x0_from_velocity
from rtdmd.models.backbones.base import Backbone, Condition, condition_batch_size, index_condition
from rtdmd.models.samplers.cps import CPSSampler, Rollout
from rtdmd.models.samplers.draws import Draws, DrawsNoise


@dataclass
class UpdateContext:
    """What the components of one update share.

    Attributes:
        backbone: the three networks.
        sampler: the generator's few-step sampler (schedule, transition).
        cond: the encoded prompts of the (micro-)batch.
        draws: the update's random numbers, by name (:mod:`rtdmd.models.samplers.draws`).
    """

    backbone: Backbone
    sampler: CPSSampler
    cond: Condition
    draws: Draws

    @property
    def batch_size(self) -> int:
        return condition_batch_size(self.cond)

    def fresh_rollout(self, random_stop: bool, grad_last: bool = False) -> Rollout:
        """A new generator rollout from fresh noise; with ``random_stop`` it stops after a
        uniform number of steps (one per update, on every rank). Only the last executed step
        keeps its graph, and only with ``grad_last``."""
        stop = self.draws.stop('stop', self.sampler.num_steps) if random_stop else None
        return self.sampler.rollout(self.backbone, self.cond, DrawsNoise(self.draws, 'fresh'),
                                    stop=stop, grad_last=grad_last)


@dataclass
class EpochContext(UpdateContext):
    """One RL epoch's batch (prompts x K), as the stage-2 generator terms see it.

    Attributes:
        prompts: the K copies of every prompt, in group order.
        metadata: per-sample prompt metadata (GenEval's requirements) or ``None``.
        reward: the stage's rewards (a ``MultiReward``).
        advantages: ``(B,)`` clipped advantages of the rollout.
        selected: the stochastic steps trained this epoch (SubGRPO).
        groups: the whole batch's prompt groups (ids, noise keys); a slice keeps them whole.
    """

    prompts: Sequence[Any] | Tensor = ()
    metadata: list[dict] | None = None
    reward: nn.Module | None = None
    advantages: Tensor | None = None
    selected: list[int] = field(default_factory=list)
    groups: Any = None  # the whole batch's prompt groups (RTDMDDistiller.Groups)

    def slice(self, start: int, stop: int) -> EpochContext:
        """The context of samples ``start:stop`` (a micro-batch)."""
        rows = torch.arange(start, stop)
        return replace(
            self, cond=index_condition(self.cond, rows), draws=self.draws.slice(start, stop),
            prompts=self.prompts[start:stop],
            metadata=None if self.metadata is None else self.metadata[start:stop],
            advantages=None if self.advantages is None else self.advantages[start:stop])


@dataclass
class StepView:
    """The generator's forward at step ``j`` of the epoch's stored rollout.

    Attributes:
        ctx: the epoch.
        j: the step index; ``sigma -> sigma_next`` its transition.
        x: the stored input ``x_j``.
        v: the generator's velocity at ``(x_j, sigma)``, carrying the graph.
        x_next: the stored sample ``x_{j+1}`` of the rollout.
        old_log_prob: the transition's log-prob recorded at sampling time.
    """

    ctx: EpochContext
    j: int
    x: Tensor
    v: Tensor
    sigma: Tensor
    sigma_next: Tensor
    x_next: Tensor
    old_log_prob: Tensor

    @property
    def final(self) -> bool:
        """The deterministic last step (to sigma 0)."""
        return self.j == self.ctx.sampler.last_step

    @cached_property
    def x0(self) -> Tensor:
        """The step's clean prediction ``x_j - sigma v`` (with the graph)."""
        return x0_from_velocity(self.x, self.v, self.sigma)


class GeneratorTerm(nn.Module):
    """A stage-2 generator term: ``steps`` it reads, ``forward(view)`` its loss at one of them.

    Attributes:
        name: log key suffix, ``loss_<name>`` (the distiller sets it from the config's key).
        needs_differentiable_reward: the term back-propagates through the rewards (the
            distiller then requires a differentiable one, checked from the config).
    """

    name: str = 'term'
    needs_differentiable_reward: bool = False

    def steps(self, ctx: EpochContext) -> set[int]:
        """Steps of the stored rollout this term needs a generator forward at."""
        raise NotImplementedError

    def forward(self, view: StepView) -> Tensor:
        raise NotImplementedError

    def own_rollout_loss(self, ctx: UpdateContext) -> Tensor | None:
        """The loss of a term that reads no stored step: on a rollout of its own (``None``:
        nothing to add)."""
        return None


__all__ = ['EpochContext', 'GeneratorTerm', 'StepView', 'UpdateContext']
