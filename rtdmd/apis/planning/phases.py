"""The phases of a training iteration, as the memory planner runs them on FakeTensors.

Each phase is the network work of one part of an iteration on one micro-batch, through the
backbone protocol (``encode_prompts``, ``predict_velocity``, ``decode``), the training rewards'
networks and the method's functions (``rtdmd.functional``), so a phase allocates what the
distillers' code allocates there:

- stage 1 (AC-DMD), on the rank's batch: ``text-encode``; ``fake-update`` (a no-grad rollout
  of the generator, the fake score's forward with grad plus the two consistency forwards with
  grad, backward); ``generator-update`` (a rollout with grad on its last step, teacher CFG and
  the fake score without grad, backward);
- stage 2 (RTDMD): ``text-encode`` of the local batch; per ``rollout`` chunk, ``rollout`` (the
  generator without grad, VAE decode, every training reward); per ``fake_score`` chunk,
  ``fake-update``; per ``generator`` chunk, ``policy-step`` (one trained stochastic step: the
  generator with grad and the policy term) and ``final-step`` (the deterministic step: the
  generator with grad, distribution matching against the teacher's CFG and the fake score,
  reward back-propagation through the VAE decoder and the differentiable rewards).

A rollout's no-grad generator forwards are identical in memory, so one stands for each of them;
the samples a rollout keeps are counted by :func:`rollout_buffers`. The renoise levels and jumps
are fixed mid-range values: memory does not depend on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rtdmd.functional.ambient import ambient_dsm_loss, ambient_target, renoise_sub_interval
from rtdmd.functional.consistency import consistency_regularizer
from rtdmd.functional.cps import cps_log_prob, cps_step
from rtdmd.functional.dmd import dmd_gradient, dmd_surrogate_loss
from rtdmd.functional.flow import x0_from_velocity
from rtdmd.functional.grpo import clipped_ratio_loss
from rtdmd.functional.reward_bp import reward_hinge_loss
from rtdmd.models.backbones.base import Backbone, Condition
from rtdmd.models.lora import adapters_disabled

from .rewards import RewardModel

#: Renoise level (sigma units, inside the sub-interval) and consistency jump used by the phases.
RENOISE, JUMP = 0.5, 0.1


@dataclass
class Workload:
    """What the phases run: the fake-tensor backbone, the rewards and the method's settings.

    Attributes:
        backbone: a real backbone whose tensors are FakeTensors.
        rewards: the training rewards' networks (stage 2).
        sigmas: the few-step schedule with its trailing 0.
        eta: CPS stochasticity.
        teacher_guidance: the teacher's CFG scale (two forwards where the family does real CFG).
        consistency: whether the fake score's consistency regulariser runs (two more forwards).
        policy, distribution_matching, reward_bp: which stage-2 generator terms are on.
    """

    backbone: Backbone
    sigmas: list[float]
    eta: float = 0.9
    teacher_guidance: float = 1.0
    consistency: bool = True
    policy: bool = True
    distribution_matching: bool = True
    reward_bp: bool = True
    rewards: list[RewardModel] = field(default_factory=list)

    def noise(self, batch: int) -> Tensor:
        return torch.randn(batch, *self.backbone.latent_shape())


def prompts(count: int, group: int = 1) -> list[str]:
    """``count`` prompts, each distinct prompt repeated ``group`` times (stage 2's K copies)."""
    def word(i: int) -> str:
        letters = ''
        while True:
            letters = chr(97 + i % 26) + letters
            i //= 26
            if not i:
                return letters
    return [f'a photo of {word(i // group)}' for i in range(count)]


def rows(cond: Condition, batch: int) -> Condition:
    """The first ``batch`` samples of an encoded condition (views, no copies)."""
    return {k: v[:batch] if isinstance(v, Tensor) else v for k, v in cond.items()}


def rollout_buffers(batch: int, latent_shape: Sequence[int], num_steps: int) -> list[Tensor]:
    """What a stage-2 rollout keeps for the whole local batch until the epoch's updates:
    ``num_steps + 1`` latents and, per step, the transition mean and the velocity (fp32), the
    per-sample log-probs and the final clean sample (``Rollout``'s fields)."""
    latents = [torch.empty(batch, *latent_shape) for _ in range(3 * num_steps + 2)]
    return latents + [torch.empty(batch) for _ in range(num_steps)]


# ----------------------------------------------------------------------------- shared pieces
def encode(w: Workload, texts: list[str], out: dict) -> None:
    """Prompt encoding (and the empty prompt the teacher's CFG uses, encoded once)."""
    with torch.no_grad():
        out['cond'] = w.backbone.encode_prompts(texts)
        w.backbone.null_condition(out['cond'])


def fake_score_loss(w: Workload, x_s: Tensor, s: float, cond: Condition) -> Tensor:
    """The fake score's ambient DSM term with grad, plus the consistency regulariser's two
    forwards with grad from the anchor (ALGORITHM.md 3.3, 3.4)."""
    z = torch.randn_like(x_s)
    t = max(RENOISE, s + JUMP)
    x_t, sigma_ts = renoise_sub_interval(x_s, s, t, z)
    v = w.backbone.predict_velocity('fake_score', x_t, t, cond)
    loss = ambient_dsm_loss(v, ambient_target(x_s, s, t, z), sigma_ts)
    if w.consistency:
        t_jump = t - JUMP
        with torch.no_grad():
            hops = [cps_step(x_t, v.detach(), t, t_jump, w.eta, torch.randn_like(x_t))[0]
                    for _ in range(2)]
        h_a = x0_from_velocity(x_t, v, t)
        h1, h2 = (x0_from_velocity(x, w.backbone.predict_velocity('fake_score', x, t_jump, cond),
                                   t_jump) for x in hops)
        loss = loss + 0.01 * consistency_regularizer(h1, h2, h_a)
    return loss


def matching_loss(w: Workload, x_s: Tensor, s: float, cond: Condition) -> Tensor:
    """Distribution matching of a generator sample at level ``s``: teacher CFG and fake score at
    the renoised sample without grad, both mapped back to ``s`` (ALGORITHM.md 3.2)."""
    z = torch.randn_like(x_s)
    t = max(RENOISE, s + JUMP)
    x_t, _ = renoise_sub_interval(x_s, s, t, z)
    with torch.no_grad():
        v_real = w.backbone.predict_velocity('teacher', x_t, t, cond, w.teacher_guidance)
        v_fake = w.backbone.predict_velocity('fake_score', x_t, t, cond)
        noise = torch.randn_like(x_t) if s > 0 else None
        xs_real = cps_step(x_t, v_real, t, s, w.eta, noise)[0]
        xs_fake = cps_step(x_t, v_fake, t, s, w.eta, noise)[0]
    return dmd_surrogate_loss(x_s, dmd_gradient(x_s, xs_fake, xs_real))


def no_grad_forward(w: Workload, x: Tensor, step: int, cond: Condition) -> Tensor:
    """One no-grad generator step of a rollout; returns the next sample."""
    with torch.no_grad():
        v = w.backbone.predict_velocity('generator', x, w.sigmas[step], cond)
        noise = torch.randn_like(x) if w.sigmas[step + 1] > 0 else None
        return cps_step(x, v, w.sigmas[step], w.sigmas[step + 1], w.eta, noise)[0]


# ------------------------------------------------------------------------------------ phases
def transformer_fwd_bwd(w: Workload, cond: Condition) -> None:
    """Calibration: a frozen-weight forward + backward of the generator's transformer (adapters
    off), loss on the output, the input requiring grad."""
    x = w.noise(next(iter(cond.values())).shape[0]).requires_grad_(True)
    with adapters_disabled(w.backbone.generator):
        v = w.backbone.predict_velocity('generator', x, w.sigmas[0], cond)
        v.float().pow(2).mean().backward()


def stage1_fake_update(w: Workload, cond: Condition) -> None:
    x = w.noise(next(iter(cond.values())).shape[0])
    x_s = no_grad_forward(w, x, 0, cond)
    fake_score_loss(w, x_s, w.sigmas[1], cond).backward()


def stage1_generator_update(w: Workload, cond: Condition) -> None:
    x = no_grad_forward(w, w.noise(next(iter(cond.values())).shape[0]), 0, cond)
    last = len(w.sigmas) - 2  # the worst case: all steps run, grad on the final one
    v = w.backbone.predict_velocity('generator', x, w.sigmas[last], cond)
    x_s = cps_step(x, v, w.sigmas[last], 0.0, w.eta, None)[0]
    matching_loss(w, x_s, 0.0, cond).backward()


def stage2_rollout(w: Workload, cond: Condition) -> None:
    x = w.noise(next(iter(cond.values())).shape[0])
    with torch.no_grad():
        v = w.backbone.predict_velocity('generator', x, w.sigmas[0], cond)
        images = w.backbone.decode(x0_from_velocity(x, v, w.sigmas[0]))
        del v
        for reward in w.rewards:
            reward.score(images)


def stage2_fake_update(w: Workload, cond: Condition) -> None:
    x_s = w.noise(next(iter(cond.values())).shape[0])  # final samples: s = 0
    fake_score_loss(w, x_s, 0.0, cond).backward()


def stage2_policy_step(w: Workload, cond: Condition) -> None:
    x = w.noise(next(iter(cond.values())).shape[0])
    sigma, sigma_next = w.sigmas[1], w.sigmas[2]
    v = w.backbone.predict_velocity('generator', x, sigma, cond)
    _, mean, std = cps_step(x, v, sigma, sigma_next, w.eta, torch.zeros_like(x))
    log_prob = cps_log_prob(torch.randn_like(x), mean, std)
    zeros = torch.zeros_like(log_prob)
    clipped_ratio_loss(log_prob, zeros, torch.ones_like(zeros)).backward()


def stage2_final_step(w: Workload, cond: Condition) -> None:
    x = w.noise(next(iter(cond.values())).shape[0])
    sigma = w.sigmas[-2]
    x0 = x0_from_velocity(x, w.backbone.predict_velocity('generator', x, sigma, cond), sigma)
    loss = x0.new_zeros(())
    if w.distribution_matching:
        loss = loss + 1e-3 * matching_loss(w, x0, 0.0, cond)
    if w.reward_bp:
        images = w.backbone.decode(x0)
        rewards = [r.score(images) for r in w.rewards if r.differentiable]
        if rewards:
            loss = loss + reward_hinge_loss(sum(rewards))
    loss.backward()


PhaseFn = Callable[[Workload, Condition], None]
STAGE1_PHASES: dict[str, PhaseFn] = {'fake-update': stage1_fake_update,
                                     'generator-update': stage1_generator_update}
STAGE2_PHASES: dict[str, PhaseFn] = {'rollout': stage2_rollout,
                                     'fake-update': stage2_fake_update,
                                     'policy-step': stage2_policy_step,
                                     'final-step': stage2_final_step}

__all__ = ['STAGE1_PHASES', 'STAGE2_PHASES', 'Workload', 'encode', 'prompts', 'rollout_buffers',
           'rows', 'transformer_fwd_bwd']
