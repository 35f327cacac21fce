"""Stage 2: RTDMD, reward-tilted distribution matching with a hybrid policy gradient.

One ``train_step`` is one RL epoch (ALGORITHM.md 4.8): choose the SubGRPO steps, roll out K
samples per prompt with the CPS sampler (prompt-shared noise on the stochastic steps that are not
trained), score them, update the fake score once, then take exactly one generator step on the
sum of the injected terms:

- ``terms``: generator terms by name, e.g. ``policy`` (``ClippedRatioLoss`` on the trained
  stochastic steps) and ``bp`` (``RewardHingeLoss``, reward back-propagation through the final
  step); each declares the steps of the stored rollout it reads;
- ``matching``: the distribution-matching component, which trains the fake score and adds the
  DM term where its class says (``FinalStepMatching``: the final step of this rollout, the
  release's; ``RandomStopMatching``: a fresh random-stop rollout, as in stage 1).

GRPO-only, BP-only, DM+GRPO, DM+BP and full RTDMD are configs that differ by what they inject.
Reward models are built from ``rewards`` on first use (never for a model that only samples) and
are never part of the state dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from mmengine.optim import OptimWrapperDict
from torch import Tensor, nn

from rtdmd.functional.grpo import combine_advantages, select_step_subset
from rtdmd.models.backbones.base import Condition
from rtdmd.models.losses.base import EpochContext, StepView
from rtdmd.models.samplers.cps import Rollout
from rtdmd.models.samplers.noise import GeneratorNoise, GroupSharedNoise
from rtdmd.registry import LOSSES, MODELS
from rtdmd.rewards.multi import MultiReward
from rtdmd.rewards.weights import bind_reward_config

from .base import DistillerBase, item


class Groups(NamedTuple):
    """An epoch's prompts repeated K times, in group order."""

    prompts: Sequence[Any] | Tensor
    metadata: list[dict] | None
    ids: Tensor  # (N,) group (prompt) index of every sample
    keys: list[str]  # what seeds a group's shared noise


SUBGRPO_KEYS = ('range_start', 'range_end', 'num_train_steps')
REWARD_ENTRY_KEYS = ('scorer', 'weight')


@MODELS.register_module()
class RTDMDDistiller(DistillerBase):
    """Stage-2 distiller (see module docstring).

    Args:
        backbone, sampler: as in stage 1.
        rewards: ``{name: dict(scorer=<REWARDS cfg>, weight=w)}``; advantages weight the
            per-reward standardised advantages, back-propagation the differentiable rewards.
        group_size: K samples per prompt.
        terms: ``{name: <LOSSES cfg of a generator term> or None}``; logged as ``loss_<name>``.
        matching: ``RandomStopMatching`` / ``FinalStepMatching`` config, or ``None`` (no
            distribution matching; the fake score is frozen).
        subgrpo: ``dict(range_start, range_end, num_train_steps)``: the trained stochastic steps
            are a seeded subset of ``range_start..range_end`` (inclusive).
        advantage_clip: advantages are clipped to +-this.
        init_checkpoint: stage-1 checkpoint; the generator starts from its EMA weights, the fake
            score from its fake score (see :class:`DistillerBase`).
    """

    dict_arg_keys = {'subgrpo': SUBGRPO_KEYS, 'rewards': {'*': REWARD_ENTRY_KEYS}}

    def __init__(self, backbone: dict, sampler: dict, rewards: dict[str, dict],
                 group_size: int = 16, terms: dict[str, dict | None] | None = None,
                 matching: dict | None = None, subgrpo: dict | None = None,
                 advantage_clip: float = 5.0, init_checkpoint: str | None = None,
                 seed: int = 0, eval_seed: int = 42, data_preprocessor: dict | None = None
                 ) -> None:
        super().__init__(backbone=backbone, sampler=sampler, init_checkpoint=init_checkpoint,
                         seed=seed, eval_seed=eval_seed, data_preprocessor=data_preprocessor)
        self.group_size = group_size
        self.advantage_clip = advantage_clip
        self.subgrpo = dict(zip(SUBGRPO_KEYS, (0, self.sampler.num_steps - 2,
                                               self.sampler.num_steps - 2), strict=True))
        unknown = set(subgrpo or {}) - set(self.subgrpo)
        if unknown:
            raise TypeError(f'subgrpo got unknown keys {sorted(unknown)}; '
                            f'valid: {sorted(self.subgrpo)}')
        self.subgrpo.update(subgrpo or {})
        select_step_subset(seed=seed, epoch=0, **self.subgrpo)  # invalid ranges fail here
        self.terms = nn.ModuleDict()
        for name, cfg in (terms or {}).items():
            if cfg is not None:
                self.terms[name] = LOSSES.build(cfg)
                self.terms[name].name = name
        self.matching = LOSSES.build(matching) if matching else None
        if self.matching is not None and self.matching.name in self.terms:
            raise ValueError(f'terms.{self.matching.name}: the name is taken by the matching '
                             f'component (logged as loss_{self.matching.name}); rename the term')
        self.reward_cfg = _check_rewards(rewards, [n for n, t in self.terms.items()
                                                   if t.needs_differentiable_reward])
        self._reward: MultiReward | None = None
        # An older checkpoint's reward weights are not loaded: the config's reward models win.
        self._register_load_state_dict_pre_hook(_skip_reward_weights)

    @property
    def reward(self) -> MultiReward:
        """The stage's rewards, built on first use on the model's device (in eval mode)."""
        if self._reward is None:
            reward = MultiReward(self.reward_cfg).eval().to(self.iteration.device)
            object.__setattr__(self, '_reward', reward)  # not a submodule: not checkpointed
        return self._reward

    def _apply(self, fn: Any, recurse: bool = True) -> RTDMDDistiller:
        super()._apply(fn, recurse)
        if self._reward is not None:  # device moves reach the reward models too
            self._reward._apply(fn, recurse)
        return self

    # ------------------------------------------------------------------------------ training
    def train_step(self, data: dict | Sequence, optim_wrapper: OptimWrapperDict
                   ) -> dict[str, Tensor]:
        data = self.data_preprocessor(data, True)
        epoch = int(self.iteration)
        groups = self.repeat_prompts(data)
        cond = self.backbone.encode_prompts(groups.prompts)  # each distinct prompt once
        selected = select_step_subset(seed=self.seed, epoch=epoch, **self.subgrpo)
        rollout = self.sample(cond, groups, selected, epoch)
        scores = self.reward.score_all(self.backbone.decode(rollout.sample), groups.prompts,
                                       groups.metadata)
        log_vars = {f'reward_{n}': v.mean().detach() for n, v in scores.items()}
        if self.matching is not None:  # one fake step per epoch, before the generator step
            fake = self.context(cond, epoch, 'fake')
            log_vars.update(self._update(
                'fake_score', lambda: self.matching.fake_losses(fake, rollout), optim_wrapper))
        advantages = combine_advantages(scores, self.reward.weights, groups.ids,
                                        self.advantage_clip)
        ctx = EpochContext(self.backbone, self.sampler, cond, *self.streams(epoch, 'generator'),
                           prompts=groups.prompts, metadata=groups.metadata, reward=self.reward,
                           advantages=advantages, selected=selected)
        log_vars.update(self.generator_step(ctx, rollout, optim_wrapper))
        self.iteration += 1
        return log_vars

    def repeat_prompts(self, data: dict) -> Groups:
        """K copies per prompt and of its metadata (GenEval's tag / include / exclude, ...)."""
        prompts, k = data['prompt'], self.group_size
        metadata, index = data.get('metadata'), data.get('index')
        ids = torch.arange(len(prompts)).repeat_interleave(k)
        base = [f'{item(prompts, i)}#{int(index[i]) if index is not None else i}'
                for i in range(len(prompts))]
        reps = (prompts.repeat_interleave(k) if isinstance(prompts, Tensor)
                else [prompts[i] for i in ids.tolist()])
        metas = None if metadata is None else [metadata[i] for i in ids.tolist()]
        return Groups(reps, metas, ids.to(self.iteration.device), [base[i] for i in ids.tolist()])

    @torch.no_grad()
    def sample(self, cond: Condition, groups: Groups, selected: list[int], epoch: int) -> Rollout:
        """All steps; the stochastic steps SubGRPO does not train share their group's noise."""
        _, local = self.streams(epoch, 'rollout')
        stochastic = self.sampler.stochastic_steps(self.sampler.sigmas(self.backbone))
        noise = GroupSharedNoise(GeneratorNoise(local), groups.keys, epoch,
                                 [j for j in stochastic if j not in selected])
        return self.sampler.rollout(self.backbone, cond, noise)

    def generator_step(self, ctx: EpochContext, rollout: Rollout,
                       optim_wrapper: OptimWrapperDict) -> dict[str, Tensor]:
        """Every term's gradient, accumulated step by step, then exactly one optimizer step."""
        wrapper = optim_wrapper['generator']
        terms = [*self.terms.values(), *([self.matching] if self.matching is not None else [])]
        plan = [(term, term.steps(ctx)) for term in terms]
        logged: dict[str, Tensor] = {}
        with wrapper.optim_context(self.backbone.net('generator')):
            for j in sorted(set().union(*(steps for _, steps in plan))):
                view = self.step_view(ctx, rollout, j)
                self._accumulate(wrapper, {f'loss_{t.name}': t(view) for t, steps in plan
                                           if j in steps}, logged)
            for term, steps in plan:
                loss = None if steps else term.own_rollout_loss(ctx)
                if loss is not None:
                    self._accumulate(wrapper, {f'loss_{term.name}': loss}, logged)
        if logged:
            wrapper.step()
            wrapper.zero_grad()
        return logged

    def step_view(self, ctx: EpochContext, rollout: Rollout, j: int) -> StepView:
        """One generator forward, with grad, at the stored input of step ``j``."""
        sigmas, x = rollout.sigmas, rollout.latents[j]
        v = self.backbone.predict_velocity('generator', x, sigmas[j], ctx.cond)
        return StepView(ctx, j, x, v, sigmas[j], sigmas[j + 1], rollout.latents[j + 1],
                        rollout.log_probs[j])

    @staticmethod
    def _accumulate(wrapper: Any, losses: dict[str, Tensor], logged: dict) -> None:
        wrapper.backward(sum(losses.values()))
        for name, value in losses.items():
            logged[name] = logged.get(name, 0.0) + value.detach().float()


def _check_rewards(rewards: Mapping[str, Any], bp_terms: list[str]) -> dict:
    """``rewards`` well formed, and differentiable where a term back-propagates through them;
    checked from the configs, without building a reward model."""
    if not isinstance(rewards, Mapping) or not rewards:
        raise ValueError('rewards must name at least one reward: {name: dict(scorer=..., '
                         'weight=...)}')
    classes = {}
    for name, spec in rewards.items():
        if not isinstance(spec, Mapping) or 'scorer' not in spec or set(spec) - set(
                REWARD_ENTRY_KEYS):
            raise ValueError(f'rewards.{name} must be dict(scorer=..., weight=...), got '
                             f'{spec!r}')
        classes[name] = bind_reward_config(spec['scorer'])
    if bp_terms and not any(cls.is_differentiable(**args) for cls, args in classes.values()):
        names = ', '.join(f'{n} ({cls.__name__})' for n, (cls, _) in classes.items())
        raise ValueError(f'terms {bp_terms} back-propagate through the rewards, but none of '
                         f'{names} is differentiable: remove them (GRPO may use any reward) or '
                         f'add a differentiable reward')
    return {name: dict(spec) for name, spec in rewards.items()}


def _skip_reward_weights(state: dict, prefix: str, *_: Any) -> None:
    for key in [k for k in state if k.startswith(prefix + 'rewards.')]:
        del state[key]
