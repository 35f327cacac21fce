"""Where a rollout's random numbers come from: k-diffusion's ``noise_sampler`` idea.

A rollout needs an initial latent and one standard normal per stochastic step. The sampler asks
a noise source for them in that order and never draws by itself, so the same sampler serves

- training: :class:`GeneratorNoise`, one ``torch.Generator`` for the whole batch (the
  distillers' counter-based rank-local streams);
- evaluation: :class:`PerSampleNoise`, one CPU generator per sample, so an image depends only on
  its own seed (and equals what a diffusers pipeline draws from a list of generators);
- SubGRPO: :class:`GroupSharedNoise`, prompt-seeded noise shared by the K copies of a prompt on
  the stochastic steps not trained this epoch (ALGORITHM.md 4.3), another source elsewhere.

Stage 2 draws through :class:`DrawsNoise` over a :class:`Draws` object (below), whose per-sample
numbers are keyed by the sample's group and name rather than drawn in call order: a micro-batch
draws exactly the rows the whole batch would, so the result does not depend on the chunking or
on the number of processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from rtdmd.functional.grpo import shared_step_noise


class NoiseSource:
    """Initial latents and per-step transition noise of one rollout, ``(B, *shape)``."""

    def initial(self, shape: Sequence[int], device: torch.device | str) -> Tensor:
        """The initial latent ``x_0 ~ N(0, I)`` of every sample (float32)."""
        raise NotImplementedError

    def step(self, j: int, shape: Sequence[int], device: torch.device | str) -> Tensor:
        """The transition noise ``z_j ~ N(0, I)`` of stochastic step ``j`` (float32)."""
        raise NotImplementedError


class GeneratorNoise(NoiseSource):
    """Batch draws from one ``torch.Generator``, in call order (initial first, then the steps).

    Args:
        generator: the RNG; its device is where the draws happen.
    """

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def _draw(self, shape: Sequence[int], device: torch.device | str) -> Tensor:
        return torch.randn(tuple(shape), generator=self.generator, device=device,
                           dtype=torch.float32)

    def initial(self, shape: Sequence[int], device: torch.device | str) -> Tensor:
        return self._draw(shape, device)

    def step(self, j: int, shape: Sequence[int], device: torch.device | str) -> Tensor:
        return self._draw(shape, device)


class PerSampleNoise(NoiseSource):
    """One CPU generator per sample, seeded with its seed; each draws ``(1, *shape)`` in order.

    That is how diffusers draws from a list of generators (``randn_tensor``), so a student and
    its exported pipeline make the same images from the same seeds, whatever the batching.
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def _draw(self, shape: Sequence[int], device: torch.device | str) -> Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f'{len(self.generators)} seeds for a batch of {shape[0]}')
        rows = [torch.randn((1, *shape[1:]), generator=g) for g in self.generators]
        return torch.cat(rows).to(device)

    def initial(self, shape: Sequence[int], device: torch.device | str) -> Tensor:
        return self._draw(shape, device)

    def step(self, j: int, shape: Sequence[int], device: torch.device | str) -> Tensor:
        return self._draw(shape, device)


class GroupSharedNoise(NoiseSource):
    """SubGRPO's noise: prompt-seeded on ``shared_steps``, ``base``'s everywhere else.

    Args:
        base: the source of the initial latents and of the other steps.
        keys: one string per sample; samples with the same key (the K copies of a prompt) get
            the same noise on the shared steps, on every rank
            (:func:`rtdmd.functional.grpo.shared_step_noise`).
        epoch: the RL epoch (enters the seed).
        shared_steps: the stochastic steps whose noise is shared (those not trained this epoch).
    """

    def __init__(self, base: NoiseSource, keys: Sequence[str], epoch: int,
                 shared_steps: Sequence[int]) -> None:
        self.base = base
        self.keys = list(keys)
        self.epoch = epoch
        self.shared_steps = set(shared_steps)

    def initial(self, shape: Sequence[int], device: torch.device | str) -> Tensor:
        return self.base.initial(shape, device)

    def step(self, j: int, shape: Sequence[int], device: torch.device | str) -> Tensor:
        if j not in self.shared_steps:
            return self.base.step(j, shape, device)
        return shared_step_noise(self.keys, j, self.epoch, shape[1:]).to(device)


class GivenNoise(NoiseSource):
    """A given initial latent; the steps' noise from ``steps`` (a source, or tensors by step).

    Args:
        initial: ``(B, *latent)``.
        steps: where stochastic steps take their noise; ``None`` when the rollout is
            deterministic (eta 0), which asking for step noise then reports.
    """

    def __init__(self, initial: Tensor, steps: NoiseSource | Mapping[int, Tensor] | None = None
                 ) -> None:
        self.x0 = initial
        self.steps = steps

    def initial(self, shape: Sequence[int], device: torch.device | str) -> Tensor:
        if tuple(self.x0.shape) != tuple(shape):
            raise ValueError(f'the given initial latent is {tuple(self.x0.shape)}, the rollout '
                             f'needs {tuple(shape)}')
        return self.x0.to(device)

    def step(self, j: int, shape: Sequence[int], device: torch.device | str) -> Tensor:
        if isinstance(self.steps, NoiseSource):
            return self.steps.step(j, shape, device)
        if self.steps is None or j not in self.steps:
            raise ValueError(f'step {j} is stochastic, but no noise was given for it (pass a '
                             f'noise source, or eta=0)')
        return self.steps[j].to(device)


__all__ = ['GeneratorNoise', 'GivenNoise', 'GroupSharedNoise', 'NoiseSource', 'PerSampleNoise']
