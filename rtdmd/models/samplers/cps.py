"""Few-step CPS sampler (the generator's rollout) and the Euler reference sampler."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rtdmd.functional.cps import cps_log_prob, cps_step
from rtdmd.functional.flow import x0_from_velocity
from rtdmd.models.backbones.base import Backbone, Condition
from rtdmd.registry import SAMPLERS


@dataclass
class Rollout:
    """What a rollout of ``S`` executed steps leaves behind.

    Attributes:
        sample: clean prediction ``x0_hat`` of the last executed step: the generator's output.
        x_s: the CPS sample after the last executed step (noisy, at ``s``); AC-DMD's ``x_s``.
        s: ``(B,)`` noise level of ``x_s`` (0 after the final, deterministic step).
        latents: ``x_0 .. x_S`` (``x_j`` is the input of step ``j``).
        means, stds, log_probs, velocities: per executed step ``j``.
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
        self.eta = eta
        self.guidance_scale = guidance_scale
        self.log_prob = log_prob

    @property
    def num_steps(self) -> int:
        return len(self.step_list)

    def sigmas(self, backbone: Backbone) -> Tensor:
        return backbone.sigma_schedule(self.step_list, backbone.latent_shape())

    def rollout(self, backbone: Backbone, cond: Condition, noise: Tensor, *,
                role: str = 'generator', stop: int | None = None, grad_last: bool = False,
                generator: torch.Generator | None = None,
                step_noise: Mapping[int, Tensor] | None = None) -> Rollout:
        """Run steps ``0 .. stop-1`` from ``noise`` at sigma_0.

        Args:
            stop: number of executed steps ``S`` (random stop); default all.
            grad_last: keep the autograd graph of the last executed step only (gradient
                truncation); earlier steps run under ``no_grad``.
            generator: RNG of the transition noise.
            step_noise: fixed transition noise for given step indices (SubGRPO shared noise).
        """
        sigmas = self.sigmas(backbone)
        stop = self.num_steps if stop is None else stop
        if not 1 <= stop <= self.num_steps:
            raise ValueError(f'stop must lie in [1, {self.num_steps}], got {stop}')
        x = noise
        out = Rollout(sample=noise, x_s=noise, s=noise.new_zeros(noise.shape[0]), sigmas=sigmas)
        for j in range(stop):
            sigma, sigma_next = sigmas[j], sigmas[j + 1]
            ctx = contextlib.nullcontext() if (grad_last and j == stop - 1) else torch.no_grad()
            with ctx:
                v = backbone.predict_velocity(role, x, sigma, cond, self.guidance_scale)
                z = None
                if float(sigma_next) > 0 and self.eta > 0:
                    z = step_noise[j] if step_noise and j in step_noise else torch.randn(
                        x.shape, generator=generator, device=x.device, dtype=torch.float32)
                x_next, mean, std = cps_step(x.float(), v, sigma, sigma_next, self.eta, z)
                out.latents.append(x)
                out.means.append(mean)
                out.stds.append(std)
                out.velocities.append(v)
                # A deterministic step (to sigma 0, or eta 0) has log-prob 0: x_next == mean.
                out.log_probs.append(x.new_zeros(x.shape[0], dtype=torch.float32) if z is None
                                     else cps_log_prob(x_next, mean, std, self.log_prob))
                out.sample = x0_from_velocity(x.float(), v, sigma)
            x = x_next
        out.latents.append(x)
        out.x_s = x
        out.s = sigmas[stop].expand(noise.shape[0]).clone()
        return out


@SAMPLERS.register_module()
class EulerSampler(CPSSampler):
    """Deterministic Euler ODE sampler over ``num_steps`` uniform steps (teacher reference)."""

    def __init__(self, num_steps: int = 50, guidance_scale: float = 1.0) -> None:
        steps = [1000 - i * 1000 // num_steps for i in range(num_steps)]
        super().__init__(step_list=steps, eta=0.0, guidance_scale=guidance_scale)
