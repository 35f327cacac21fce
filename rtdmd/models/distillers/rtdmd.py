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
from dataclasses import replace
from functools import partial
from typing import Any, NamedTuple

import torch
from mmengine.optim import OptimWrapperDict
from torch import Tensor, nn

from rtdmd.functional.grpo import combine_advantages, finite_rewards, select_step_subset
from rtdmd.models.backbones.base import Condition
from rtdmd.models.losses.base import EpochContext, GeneratorTerm, StepView
from rtdmd.models.samplers.cps import Rollout
from rtdmd.models.samplers.draws import DrawsNoise, GroupDraws
from rtdmd.models.samplers.noise import GroupSharedNoise
from rtdmd.registry import LOSSES, MODELS
from rtdmd.rewards.multi import MultiReward
from rtdmd.rewards.weights import bind_reward_config

from .base import DistillerBase, chunk_bounds, item


class Groups(NamedTuple):
    """An epoch's prompts repeated K times, in group order."""

    prompts: Sequence[Any] | Tensor
    metadata: list[dict] | None
    ids: Tensor  # (N,) group (prompt) index of every sample
    keys: list[str]  # what seeds a group's shared noise


SUBGRPO_KEYS = ('range_start', 'range_end', 'num_train_steps')
REWARD_ENTRY_KEYS = ('scorer', 'weight')
MICRO_BATCH_KEYS = ('rollout', 'fake_score', 'generator')


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
        micro_batch: ``dict(rollout=, fake_score=, generator=)``: samples per forward of each
            phase (``None``: the whole local batch). The result does not depend on them: every
            random number is keyed by its sample (:class:`GroupDraws`), every term is a mean
            weighted by its micro-batch's share.
        loss_normalization: ``'per_step'`` (the release's: the generator objective divided by
            the number of backward passes per micro-batch, i.e. its sub-batches x trained
            steps) or ``'sum'`` (the terms summed over the trained steps).
        nonfinite_reward: ``'drop'`` a sample whose reward is not finite from the advantages
            (counted in ``nonfinite_rewards``), or ``'raise'``.
        init_checkpoint: stage-1 checkpoint; the generator starts from its EMA weights, the fake
            score from its fake score (see :class:`DistillerBase`).
        fresh_lora_std: std of the fresh trainable LoRA's ``lora_A`` at the warm start
            (``lora_B = 0``); the release re-initialises it with ``N(0, 1)``, for both networks.
            ``None`` keeps the backbone's own LoRA init.
    """

    dict_arg_keys = {'subgrpo': SUBGRPO_KEYS, 'rewards': {'*': REWARD_ENTRY_KEYS},
                     'micro_batch': MICRO_BATCH_KEYS}

    def __init__(self, backbone: dict, sampler: dict, rewards: dict[str, dict],
                 group_size: int = 16, terms: dict[str, dict | None] | None = None,
                 matching: dict | None = None, subgrpo: dict | None = None,
                 advantage_clip: float = 5.0, micro_batch: dict | None = None,
                 loss_normalization: str = 'per_step', nonfinite_reward: str = 'drop',
                 init_checkpoint: str | None = None, fresh_lora_std: float | None = 1.0,
                 seed: int = 0, eval_seed: int = 42, data_preprocessor: dict | None = None
                 ) -> None:
        super().__init__(backbone=backbone, sampler=sampler, init_checkpoint=init_checkpoint,
                         fresh_lora_std=fresh_lora_std, seed=seed, eval_seed=eval_seed,
                         data_preprocessor=data_preprocessor)
        self.group_size = group_size
        self.advantage_clip = advantage_clip
        self.micro_batch = dict.fromkeys(MICRO_BATCH_KEYS)
        unknown = set(micro_batch or {}) - set(self.micro_batch)
        if unknown:
            raise TypeError(f'micro_batch got unknown keys {sorted(unknown)}; '
                            f'valid: {sorted(self.micro_batch)}')
        self.micro_batch.update(micro_batch or {})
        for key, size in self.micro_batch.items():
            if size is not None and (not isinstance(size, int) or size < 1):
                raise ValueError(f'micro_batch.{key} must be a positive int or None, got '
                                 f'{size!r}')
        if loss_normalization not in ('per_step', 'sum'):
            raise ValueError(f"loss_normalization must be 'per_step' or 'sum', got "
                             f'{loss_normalization!r}')
        if nonfinite_reward not in ('drop', 'raise'):
            raise ValueError(f"nonfinite_reward must be 'drop' or 'raise', got "
                             f'{nonfinite_reward!r}')
        self.loss_normalization = loss_normalization
        self.nonfinite_reward = nonfinite_reward
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
        ctx = self.epoch_context(cond, groups, epoch, selected)
        rollout, scores = self.sample_and_score(ctx, epoch)
        valid = finite_rewards(scores)
        log_vars = self.reward_log(scores, valid)
        if self.matching is not None:  # one fake step per epoch, before the generator step
            fake = replace(ctx, draws=self.group_draws(epoch, 'fake', groups))
            log_vars.update(self.update('fake_score', self.fake_passes(fake, rollout),
                                        optim_wrapper))
        ctx.advantages = combine_advantages(scores, self.reward.weights, groups.ids,
                                            self.advantage_clip, valid=valid,
                                            all_reduce=all_reduce_sum)
        log_vars.update(self.update('generator', self.generator_passes(ctx, rollout),
                                    optim_wrapper))
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

    def group_draws(self, epoch: int, tag: str, groups: Groups) -> GroupDraws:
        """The epoch's draws of ``tag``, keyed by each sample's group (see GroupDraws)."""
        return GroupDraws((self.seed, epoch, tag), groups.keys)

    def epoch_context(self, cond: Condition, groups: Groups, epoch: int,
                      selected: list[int]) -> EpochContext:
        return EpochContext(self.backbone, self.sampler, cond,
                            self.group_draws(epoch, 'generator', groups), prompts=groups.prompts,
                            metadata=groups.metadata, reward=self.reward, selected=selected,
                            groups=groups)

    @torch.no_grad()
    def sample_and_score(self, ctx: EpochContext, epoch: int
                         ) -> tuple[Rollout, dict[str, Tensor]]:
        """All steps, per ``rollout`` micro-batch, decoded and scored by every reward; the
        stochastic steps SubGRPO does not train share their group's noise."""
        draws = self.group_draws(epoch, 'rollout', ctx.groups)
        stochastic = self.sampler.stochastic_steps(self.sampler.sigmas(self.backbone))
        shared = [j for j in stochastic if j not in ctx.selected]
        parts, scores = [], []
        for a, b in chunk_bounds(ctx.batch_size, self.micro_batch['rollout']):
            part = ctx.slice(a, b)
            noise = GroupSharedNoise(DrawsNoise(draws.slice(a, b), 'rollout'),
                                     ctx.groups.keys[a:b], epoch, shared)
            with self.phase('rollout'):
                parts.append(self.sampler.rollout(self.backbone, part.cond, noise))
            with self.phase('decode'):
                images = self.backbone.decode(parts[-1].sample)
            with self.phase('rewards'):
                scores.append(self.reward.score_all(images, part.prompts, part.metadata))
        return Rollout.cat(parts), {n: torch.cat([s[n] for s in scores]) for n in scores[0]}

    def fake_passes(self, ctx: EpochContext, rollout: Rollout) -> list:
        """One backward pass per ``fake_score`` micro-batch of the epoch's rollout."""
        n = ctx.batch_size

        def run(a: int, b: int):
            return self.matching.fake_losses(ctx.slice(a, b), rollout.slice(a, b)), (b - a) / n

        return [('fake_update', partial(run, a, b))
                for a, b in chunk_bounds(n, self.micro_batch['fake_score'])]

    def generator_passes(self, ctx: EpochContext, rollout: Rollout) -> list:
        """One backward pass per ``generator`` micro-batch and trained step (every term that
        reads the step), then one per term with a rollout of its own; each weighted by its
        micro-batch's share and, with ``loss_normalization='per_step'``, divided by the passes
        per micro-batch (the release's division by sub-batches x trained steps)."""
        terms = [*self.terms.values(), *([self.matching] if self.matching is not None else [])]
        plan = [(term, term.steps(ctx)) for term in terms]
        steps = sorted(set().union(*(steps for _, steps in plan)))
        own = [term for term, steps in plan if not steps]
        per_chunk = len(steps) + len(own)
        norm = per_chunk if self.loss_normalization == 'per_step' else 1
        n, passes = ctx.batch_size, []

        def at_step(a: int, b: int, j: int):
            view = self.step_view(ctx.slice(a, b), rollout.slice(a, b), j)
            terms_j = {f'loss_{t.name}': t(view) for t, steps in plan if j in steps}
            return terms_j, (b - a) / n / norm

        def own_rollout(a: int, b: int, term: GeneratorTerm):
            loss = term.own_rollout_loss(ctx.slice(a, b))
            return ({} if loss is None else {f'loss_{term.name}': loss}), (b - a) / n / norm

        for a, b in chunk_bounds(n, self.micro_batch['generator']):
            passes += [(f'generator_step{j}', partial(at_step, a, b, j)) for j in steps]
            passes += [(f'generator_{term.name}_rollout', partial(own_rollout, a, b, term))
                       for term in own]
        return passes

    def step_view(self, ctx: EpochContext, rollout: Rollout, j: int) -> StepView:
        """One generator forward, with grad, at the stored input of step ``j``."""
        sigmas, x = rollout.sigmas, rollout.latents[j]
        v = self.backbone.predict_velocity('generator', x, sigmas[j], ctx.cond)
        return StepView(ctx, j, x, v, sigmas[j], sigmas[j + 1], rollout.latents[j + 1],
                        rollout.log_probs[j])

    def reward_log(self, scores: dict[str, Tensor], valid: Tensor) -> dict[str, Tensor]:
        """Mean of every reward over the valid samples, and how many were dropped."""
        out = {f'reward_{n}': v[valid].float().mean().detach() for n, v in scores.items()}
        out['nonfinite_rewards'] = (~valid).sum().float()
        if self.nonfinite_reward == 'raise' and not bool(valid.all()):
            bad = {n: int((~torch.isfinite(v)).sum()) for n, v in scores.items()}
            raise FloatingPointError(f'non-finite rewards at epoch {int(self.iteration)}: '
                                     f'{bad} of {valid.numel()} samples (set '
                                     f"model.nonfinite_reward='drop' to train on the others)")
        return out


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum over processes (identity on one)."""
    from mmengine.dist import all_reduce, get_world_size

    if get_world_size() > 1:
        t = t.clone()
        all_reduce(t, op='sum')
    return t


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
