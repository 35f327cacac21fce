"""Stage 2: RTDMD, reward-tilted distribution matching with a hybrid policy gradient.

One ``train_step`` is one RL epoch (ALGORITHM.md 4.8): choose the SubGRPO steps, roll out K
samples per prompt with the CPS sampler (prompt-shared noise on the stochastic steps that are not
trained), score them, update the fake score once, then take exactly one generator step on

    sum_{j in S_e} L_ppo(j)  +  L_dm  +  L_bp(final step)

where every term is optional, so GRPO-only, BP-only, DM+GRPO, DM+BP and full RTDMD are configs
that differ by the components they inject. ``dm_layout`` places the distribution-matching term
on the deterministic final step (the release's) or on a random-stop rollout as in stage 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from mmengine.optim import OptimWrapperDict
from torch import Tensor

from rtdmd.functional.cps import cps_log_prob, cps_step
from rtdmd.functional.flow import x0_from_velocity
from rtdmd.functional.grpo import combine_advantages, select_step_subset, shared_step_noise
from rtdmd.models.backbones.base import Condition
from rtdmd.models.samplers.cps import Rollout
from rtdmd.registry import LOSSES, MODELS, REWARDS

from .base import DistillerBase, item, load_stage_checkpoint
from .matching import SubIntervalMatching

DM_LAYOUTS = ('final_step', 'random_stop')


@MODELS.register_module()
class RTDMDDistiller(DistillerBase):
    """Stage-2 distiller (see module docstring).

    Args:
        backbone, sampler: as in stage 1.
        rewards: ``{name: dict(scorer=<REWARDS cfg>, weight=w)}``; advantages weight the
            per-reward standardised advantages, back-propagation the differentiable rewards.
        group_size: K samples per prompt.
        policy_loss: ``ClippedRatioLoss`` config or ``None`` (no GRPO term).
        reward_bp_loss: ``RewardHingeLoss`` config or ``None`` (no reward back-propagation).
        dmd_loss: ``DMDLoss`` config (its ``loss_weight`` is the DM weight) or ``None``.
        dm_layout: ``'final_step'`` or ``'random_stop'``.
        fake_loss, consistency_loss, teacher_guidance, renoise, consistency_max_jump: the
            fake-score and matching settings (see :class:`SubIntervalMatching`); ``fake_loss``
            ``None`` freezes the fake score.
        subgrpo: ``dict(range_start, range_end, num_train_steps)``: the trained stochastic steps
            are a seeded subset of ``range_start..range_end`` (inclusive).
        advantage_clip: advantages are clipped to +-this.
        init_checkpoint: stage-1 checkpoint; the generator starts from its EMA weights, the fake
            score from its fake score.
    """

    def __init__(self, backbone: dict, sampler: dict, rewards: dict[str, dict],
                 group_size: int = 16, policy_loss: dict | None = None,
                 reward_bp_loss: dict | None = None, dmd_loss: dict | None = None,
                 dm_layout: str = 'final_step', fake_loss: dict | None = None,
                 consistency_loss: dict | None = None,
                 teacher_guidance: float | Sequence[float] = 1.0, renoise: dict | None = None,
                 consistency_max_jump: int = 200, subgrpo: dict | None = None,
                 advantage_clip: float = 5.0, init_checkpoint: str | None = None,
                 seed: int = 0, eval_seed: int = 42, data_preprocessor: dict | None = None
                 ) -> None:
        super().__init__(backbone=backbone, sampler=sampler, seed=seed, eval_seed=eval_seed,
                         data_preprocessor=data_preprocessor)
        if dm_layout not in DM_LAYOUTS:
            raise ValueError(f'dm_layout must be one of {DM_LAYOUTS}, got {dm_layout!r}')
        if dmd_loss is not None and fake_loss is None:
            raise ValueError('dmd_loss needs a fake_loss: the fake score must track the generator')
        self.group_size = group_size
        self.dm_layout = dm_layout
        self.advantage_clip = advantage_clip
        self.subgrpo = dict(range_start=0, range_end=self.sampler.num_steps - 2,
                            num_train_steps=self.sampler.num_steps - 2)
        unknown = set(subgrpo or {}) - set(self.subgrpo)
        if unknown:
            raise TypeError(f'subgrpo got unknown keys {sorted(unknown)}; '
                            f'valid: {sorted(self.subgrpo)}')
        self.subgrpo.update(subgrpo or {})
        select_step_subset(seed=seed, epoch=0, **self.subgrpo)  # invalid ranges fail here
        self.policy_loss = LOSSES.build(policy_loss) if policy_loss else None
        self.reward_bp_loss = LOSSES.build(reward_bp_loss) if reward_bp_loss else None
        self.matching = (SubIntervalMatching(dmd_loss, fake_loss, consistency_loss,
                                             teacher_guidance, renoise, consistency_max_jump,
                                             self.sampler.eta) if fake_loss else None)
        self.rewards, self.reward_weights = self._build_rewards(rewards)
        # Reward models are frozen inputs of the method, loaded from their own weights: they stay
        # out of checkpoints (GBs each), and checkpoints load without them.
        self._register_state_dict_hook(_drop_reward_weights)
        self._register_load_state_dict_pre_hook(_skip_reward_weights)
        self.register_load_state_dict_post_hook(_ignore_reward_weights)
        if init_checkpoint:
            load_stage_checkpoint(self.backbone, init_checkpoint)

    def _build_rewards(self, rewards: dict[str, dict]) -> tuple[torch.nn.ModuleDict, dict]:
        if not rewards:
            raise ValueError('rewards must name at least one reward: {name: dict(scorer=..., '
                             'weight=...)}')
        scorers, weights = torch.nn.ModuleDict(), {}
        for name, spec in rewards.items():
            unknown = set(spec) - {'scorer', 'weight'}
            if unknown or 'scorer' not in spec:
                raise ValueError(f'rewards.{name} must be dict(scorer=..., weight=...), got keys '
                                 f'{sorted(spec)}')
            scorers[name] = REWARDS.build(spec['scorer'])
            weights[name] = float(spec.get('weight', 1.0))
        if self.reward_bp_loss is not None and not any(s.differentiable
                                                       for s in scorers.values()):
            names = ', '.join(f'{n} ({type(s).__name__})' for n, s in scorers.items())
            raise ValueError(f'reward_bp_loss back-propagates through the rewards, but none of '
                             f'{names} is differentiable: remove reward_bp_loss (GRPO may use '
                             f'any reward) or add a differentiable reward')
        return scorers, weights

    # ------------------------------------------------------------------------------ training
    def train_step(self, data: dict | Sequence, optim_wrapper: OptimWrapperDict
                   ) -> dict[str, Tensor]:
        data = self.data_preprocessor(data, True)
        epoch = int(self.iteration)
        prompts, metas, groups, keys = self._repeat(data)
        cond = self.backbone.encode_prompts(prompts)
        shared, local = self.streams(epoch, 'rollout')
        selected = select_step_subset(seed=self.seed, epoch=epoch, **self.subgrpo)
        ro = self._rollout(cond, keys, selected, epoch, local)
        scores = self._scores(self.backbone.decode(ro.sample), prompts, metas)
        log_vars = {f'reward_{n}': v.mean().detach() for n, v in scores.items()}
        if self.matching is not None:  # one fake step per epoch, before the generator step
            log_vars.update(self._update('fake_score', self._fake_losses(cond, ro, epoch),
                                         optim_wrapper))
        adv = combine_advantages(scores, self.reward_weights, groups, self.advantage_clip)
        log_vars.update(self._generator_step(cond, prompts, metas, ro, adv, selected, epoch,
                                             optim_wrapper))
        self.iteration += 1
        return log_vars

    def _repeat(self, data: dict) -> tuple[Any, list[dict] | None, Tensor, list[str]]:
        """K copies per prompt and of its metadata (GenEval's tag / include / exclude, ...);
        group ids; the keys that seed a group's shared noise."""
        prompts, k = data['prompt'], self.group_size
        metadata = data.get('metadata')
        index = data.get('index')
        n = len(prompts)
        ids = torch.arange(n).repeat_interleave(k)
        base = [f'{item(prompts, i)}#{int(index[i]) if index is not None else i}'
                for i in range(n)]
        if isinstance(prompts, Tensor):
            reps = prompts.repeat_interleave(k)
        else:
            reps = [prompts[i] for i in ids.tolist()]
        metas = None if metadata is None else [metadata[i] for i in ids.tolist()]
        return reps, metas, ids.to(self.iteration.device), [base[i] for i in ids.tolist()]

    def _scores(self, images: Tensor, prompts: Any, metas: list[dict] | None,
                differentiable_only: bool = False) -> dict[str, Tensor]:
        """Every reward (or the differentiable ones) of ``images`` for their prompts."""
        return {n: r(images, prompts, metas) for n, r in self.rewards.items()
                if r.differentiable or not differentiable_only}

    @torch.no_grad()
    def _rollout(self, cond: Condition, keys: list[str], selected: list[int], epoch: int,
                 local: torch.Generator) -> Rollout:
        """All steps; stochastic steps outside the SubGRPO subset use group-shared noise."""
        shape = self.backbone.latent_shape()
        stochastic = range(self.sampler.num_steps - 1)
        step_noise = {j: shared_step_noise(keys, j, epoch, shape).to(self.iteration.device)
                      for j in stochastic if j not in selected}
        return self.sampler.rollout(self.backbone, cond, self.initial_noise(cond, local),
                                    generator=local, step_noise=step_noise)

    def _fake_losses(self, cond: Condition, ro: Rollout, epoch: int) -> dict[str, Tensor]:
        shared, local = self.streams(epoch, 'fake')
        if self.dm_layout == 'random_stop':  # track the generator at every sub-interval
            ro = self.fresh_rollout(cond, shared, local)
            return self.matching.fake_losses(self.backbone, cond, ro.x_s, ro.s, shared, local)
        zeros = torch.zeros_like(ro.s)
        return self.matching.fake_losses(self.backbone, cond, ro.sample, zeros, shared, local)

    def _generator_step(self, cond: Condition, prompts: Any, metas: list[dict] | None,
                        ro: Rollout, adv: Tensor, selected: list[int], epoch: int,
                        optim_wrapper: OptimWrapperDict) -> dict[str, Tensor]:
        """Accumulate every term over the trained steps, then exactly one optimizer step."""
        wrapper = optim_wrapper['generator']
        last = self.sampler.num_steps - 1
        use_final = self.reward_bp_loss is not None or (
            self.matching is not None and self.matching.dmd_loss is not None
            and self.dm_layout == 'final_step')
        steps = sorted(set(selected if self.policy_loss else []) | ({last} if use_final else set()))
        terms: dict[str, Tensor] = {}
        shared, local = self.streams(epoch, 'generator')
        with wrapper.optim_context(self.backbone.net('generator')):
            for j in steps:
                losses = self._step_losses(cond, prompts, metas, ro, adv, j, j in selected,
                                           j == last, shared, local)
                self._accumulate(wrapper, losses, terms)
            if self.dm_layout == 'random_stop' and self.matching is not None \
                    and self.matching.dmd_loss is not None:
                self._accumulate(wrapper, {'loss_dm': self._random_stop_dm(cond, shared, local)},
                                 terms)
        if terms:
            wrapper.step()
            wrapper.zero_grad()
        return terms

    def _accumulate(self, wrapper: Any, losses: dict[str, Tensor], terms: dict) -> None:
        total = sum(losses.values())
        wrapper.backward(total)
        for name, value in losses.items():
            terms[name] = terms.get(name, 0.0) + value.detach().float()

    def _step_losses(self, cond: Condition, prompts: Any, metas: list[dict] | None,
                     ro: Rollout, adv: Tensor, j: int, ppo: bool, final: bool,
                     shared: torch.Generator, local: torch.Generator) -> dict[str, Tensor]:
        """Terms of step ``j`` from one forward of the generator at the stored ``x_j``."""
        sigmas = ro.sigmas
        x_j = ro.latents[j]
        v = self.backbone.predict_velocity('generator', x_j, sigmas[j], cond)
        losses: dict[str, Tensor] = {}
        if ppo and self.policy_loss is not None:
            _, mean, std = cps_step(x_j, v, sigmas[j], sigmas[j + 1], self.sampler.eta,
                                    torch.zeros_like(x_j))
            log_prob = cps_log_prob(ro.latents[j + 1], mean, std, self.sampler.log_prob)
            losses['loss_policy'] = self.policy_loss(log_prob, ro.log_probs[j], adv)
        if final:
            x0 = x0_from_velocity(x_j, v, sigmas[j])
            if self.dm_layout == 'final_step' and self.matching is not None \
                    and self.matching.dmd_loss is not None:
                losses['loss_dm'] = self.matching.generator_loss(
                    self.backbone, cond, x0, torch.zeros_like(ro.s), shared, local)
            if self.reward_bp_loss is not None:
                scores = self._scores(self.backbone.decode(x0), prompts, metas,
                                      differentiable_only=True)
                reward = sum(self.reward_weights[n] * v for n, v in scores.items())
                losses['loss_bp'] = self.reward_bp_loss(reward)
        return losses

    def _random_stop_dm(self, cond: Condition, shared: torch.Generator,
                        local: torch.Generator) -> Tensor:
        """Stage 1's sub-interval DM on a fresh random-stop rollout with grad on its last step."""
        ro = self.fresh_rollout(cond, shared, local, grad_last=True)
        return self.matching.generator_loss(self.backbone, cond, ro.x_s, ro.s, shared, local)


def _drop_reward_weights(module: torch.nn.Module | None, state: dict, prefix: str, _meta: Any
                         ) -> None:
    for key in [k for k in state if k.startswith(prefix + 'rewards.')]:
        del state[key]


def _skip_reward_weights(state: dict, prefix: str, *_: Any) -> None:
    """An older checkpoint's reward weights are not loaded: the config's reward models win."""
    _drop_reward_weights(None, state, prefix, None)


def _ignore_reward_weights(module: torch.nn.Module, incompatible: Any) -> None:
    """The reward models' parameters are not expected in a checkpoint."""
    for keys in (incompatible.missing_keys, incompatible.unexpected_keys):
        keys[:] = [k for k in keys if not (k.startswith('rewards.') or '.rewards.' in k)]
