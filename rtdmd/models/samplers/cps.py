"""Few-step CPS sampler (the generator's rollout) and the Euler reference sampler.

The sampler owns the transition (ALGORITHM.md 1.3): which steps are stochastic, the step itself,
its log-probability and the CPS back-projection of AC-DMD. Nothing outside this package calls
:func:`rtdmd.functional.cps.cps_step` or re-derives the schedule's sigmas; random numbers come
from a :class:`~rtdmd.models.samplers.noise.NoiseSource`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rtdmd.functional.cps import cps_log_prob, cps_step
from rtdmd.functional.flow import SigmaLike, x0_from_velocity
from rtdmd.models.backbones.base import Backbone, Condition, condition_batch_size
from rtdmd.registry import SAMPLERS

from .noise import GivenNoise, NoiseSource


@dataclass
class Rollout:
    """What a rollout of ``S`` executed steps leaves behind.

    Attributes:
        sample: clean prediction ``x0_hat`` of the last executed step: the generator's output.
        x_s: the CPS sample after the last executed step (noisy, at ``s``); AC-DMD's ``x_s``.
        s: ``(B,)`` noise level of ``x_s`` (0 after the final, deterministic step).
        latents: ``x_0 .. x_S`` (``x_j`` is the input of step ``j``).
        means, log_probs, velocities: per executed step ``j``, one row per sample.
        stds: per executed step, the transition std (one value for the whole batch: the
            schedule's sigmas are shared).
        sigmas: the schedule ``(num_steps + 1,)`` the rollout used.
    """

    sample: Tensor
    x_s: Tensor
    s: Tensor
    sigmas: Tensor
    latents: list[Tensor] = field(default_factory=list)
    means: list[Tensor] = field(default_factory=list)
    stds: list[Tensor] = field(default_factory=list)
    log_probs: list[Tensor] = field(default_factory=list)
    velocities: list[Tensor] = field(default_factory=list)

    def slice(self, start: int, stop: int) -> Rollout:
        """Samples ``start:stop`` of the rollout."""
        rows = slice(start, stop)
        return Rollout(self.sample[rows], self.x_s[rows], self.s[rows], self.sigmas,
                       [v[rows] for v in self.latents], [v[rows] for v in self.means],
                       list(self.stds), [v[rows] for v in self.log_probs],
                       [v[rows] for v in self.velocities])

    @staticmethod
    def cat(parts: Sequence[Rollout]) -> Rollout:
        """One rollout of the micro-batches ``parts`` (same schedule and stop), in order."""

        def join(name: str) -> list[Tensor]:
            return [torch.cat(v) for v in zip(*(getattr(p, name) for p in parts), strict=True)]

        return Rollout(torch.cat([p.sample for p in parts]), torch.cat([p.x_s for p in parts]),
                       torch.cat([p.s for p in parts]), parts[0].sigmas, join('latents'),
                       join('means'), list(parts[0].stds), join('log_probs'),
                       join('velocities'))


class CPSTransition:
    """The CPS transition at stochasticity ``eta`` and its log-probability.

    Args:
        eta: stochasticity in [0, 1] (``theta = eta pi / 2``); 0 is the Euler ODE step.
        log_prob: ``'surrogate'`` (the release's ``-mean (x' - mu)^2``) or ``'gaussian'``.
    """

    def __init__(self, eta: float = 0.9, log_prob: str = 'surrogate') -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f'eta must lie in [0, 1], got {eta}')
        if log_prob not in ('surrogate', 'gaussian'):
            raise ValueError(f"log_prob must be 'surrogate' or 'gaussian', got {log_prob!r}")
        self.eta = eta
        self.log_prob_kind = log_prob

    def is_stochastic(self, sigma_next: SigmaLike) -> bool:
        """Whether a step to ``sigma_next`` draws noise: never to sigma 0, never at eta 0."""
        return self.eta > 0 and bool(torch.as_tensor(sigma_next).max() > 0)

    def __call__(self, x: Tensor, v: Tensor, sigma: SigmaLike, sigma_next: SigmaLike,
                 noise: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_next, mean, std)`` of one step ``sigma -> sigma_next``."""
        return cps_step(x, v, sigma, sigma_next, self.eta, noise)

    def log_prob(self, x_next: Tensor, x: Tensor, v: Tensor, sigma: SigmaLike,
                 sigma_next: SigmaLike) -> Tensor:
        """``(B,)`` log-probability of ``x -> x_next`` under velocity ``v`` (grad flows via v)."""
        _, mean, std = self(x, v, sigma, sigma_next, torch.zeros_like(x))
        return cps_log_prob(x_next, mean, std, self.log_prob_kind)

    def back_project(self, x_t: Tensor, v_real: Tensor, v_fake: Tensor, t: SigmaLike,
                     s: SigmaLike, noise: Tensor | None) -> tuple[Tensor, Tensor]:
        """Teacher and fake velocities at ``t`` mapped back to ``s`` with the SAME noise.

        ALGORITHM.md 3.2 and pitfall 15: the noise cancels in the DMD direction,
        ``xs_fake - xs_real = [s cos(theta) (1 - t) - (1 - s) t] (v_fake - v_real)``; at
        ``s = 0`` both are the x0 predictions ``x_t - t v``.

        Returns:
            ``(xs_real, xs_fake)``, each shaped and typed like ``x_t``.
        """
        return (self(x_t, v_real, t, s, noise)[0], self(x_t, v_fake, t, s, noise)[0])


@SAMPLERS.register_module()
class CPSSampler:
    """Backward simulation over a few-step schedule with the CPS transition.

    Args:
        step_list: model timesteps of the steps (``[1000, 750, 500, 250]``); the backbone turns
            them into its (shifted) sigmas and appends 0.
        eta: CPS stochasticity of the intermediate steps; the last step (to sigma 0) is always
            deterministic.
        guidance_scale: CFG scale used when sampling (1 for the CFG-free student).
        log_prob: ``'surrogate'`` (the release's) or ``'gaussian'`` transition log-prob.
    """

    def __init__(self, step_list: Sequence[int] = (1000, 750, 500, 250), eta: float = 0.9,
                 guidance_scale: float = 1.0, log_prob: str = 'surrogate') -> None:
        if not step_list or list(step_list) != sorted(step_list, reverse=True):
            raise ValueError(f'step_list must be non-empty and decreasing, got {list(step_list)}')
        self.step_list = list(step_list)
        self.guidance_scale = guidance_scale
        self.transition = CPSTransition(eta, log_prob)

    @property
    def eta(self) -> float:
        return self.transition.eta

    @property
    def num_steps(self) -> int:
        return len(self.step_list)

    @property
    def last_step(self) -> int:
        """Index of the final, deterministic step (to sigma 0)."""
        return self.num_steps - 1

    def sigmas(self, backbone: Backbone) -> Tensor:
        """The backbone's shifted sigmas of :attr:`step_list` with a trailing 0, ``(S + 1,)``."""
        return backbone.sigma_schedule(self.step_list, backbone.latent_shape())

    def stochastic_steps(self, sigmas: Tensor) -> list[int]:
        """Indices ``j`` whose transition ``sigmas[j] -> sigmas[j + 1]`` draws noise."""
        return [j for j in range(self.num_steps)
                if self.transition.is_stochastic(sigmas[j + 1])]

    def rollout(self, backbone: Backbone, cond: Condition, noise: NoiseSource | Tensor, *,
                role: str = 'generator', stop: int | None = None,
                grad_last: bool = False) -> Rollout:
        """Run steps ``0 .. stop-1`` from the source's initial latent at sigma_0.

        Args:
            cond: the encoded prompts, one per sample.
            noise: the initial latent and the stochastic steps' noise, asked for in step order
                (a tensor is the initial latent of a deterministic rollout).
            role: the backbone network that predicts the velocity.
            stop: number of executed steps ``S`` (random stop); default all.
            grad_last: keep the autograd graph of the last executed step only (gradient
                truncation); earlier steps run under ``no_grad``.
        """
        if isinstance(noise, Tensor):
            noise = GivenNoise(noise)
        batch = condition_batch_size(cond)
        sigmas = self.sigmas(backbone)
        stop = self.num_steps if stop is None else stop
        if not 1 <= stop <= self.num_steps:
            raise ValueError(f'stop must lie in [1, {self.num_steps}], got {stop}')
        shape = (batch, *backbone.latent_shape())
        x = noise.initial(shape, sigmas.device)
        out = Rollout(sample=x, x_s=x, s=x.new_zeros(batch), sigmas=sigmas)
        for j in range(stop):
            sigma, sigma_next = sigmas[j], sigmas[j + 1]
            ctx = contextlib.nullcontext() if (grad_last and j == stop - 1) else torch.no_grad()
            with ctx:
                v = backbone.predict_velocity(role, x, sigma, cond, self.guidance_scale)
                stochastic = self.transition.is_stochastic(sigma_next)
                z = noise.step(j, shape, x.device) if stochastic else None
                x_next, mean, std = self.transition(x.float(), v, sigma, sigma_next, z)
                out.latents.append(x)
                out.means.append(mean)
                out.stds.append(std)
                out.velocities.append(v)
                # A deterministic step (to sigma 0, or eta 0) has log-prob 0: x_next == mean.
                out.log_probs.append(
                    cps_log_prob(x_next, mean, std, self.transition.log_prob_kind) if stochastic
                    else x.new_zeros(batch, dtype=torch.float32))
                out.sample = x0_from_velocity(x.float(), v, sigma)
            x = x_next
        out.latents.append(x)
        out.x_s = x
        out.s = sigmas[stop].expand(batch).clone()
        return out


@SAMPLERS.register_module()
class EulerSampler(CPSSampler):
    """Deterministic Euler ODE sampler over ``num_steps`` uniform steps (teacher reference)."""

    def __init__(self, num_steps: int = 50, guidance_scale: float = 1.0) -> None:
        steps = [1000 - i * 1000 // num_steps for i in range(num_steps)]
        super().__init__(step_list=steps, eta=0.0, guidance_scale=guidance_scale)


__all__ = ['CPSSampler', 'CPSTransition', 'EulerSampler', 'Rollout']
