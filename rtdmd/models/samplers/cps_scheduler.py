"""A diffusers scheduler that runs the student's few-step CPS sampler inside diffusers pipelines.

The exported pipelines (``tools/export.py``) keep the family's own diffusers pipeline class
(``StableDiffusion3Pipeline``, ``FluxPipeline``, ``Flux2KleinPipeline``) and swap its
``FlowMatchEulerDiscreteScheduler`` for :class:`CPSScheduler`: a fixed list of already-shifted
sigmas (ALGORITHM.md 1.2; pitfall 2: never shifted again) and the CPS transition
(ALGORITHM.md 1.3, the sampler's :class:`~rtdmd.models.samplers.cps.CPSTransition`).

What the pipelines ask of a scheduler, and what this one answers:

- ``set_timesteps(num_inference_steps, device, sigmas=..., mu=..., timesteps=...)`` (through
  ``retrieve_timesteps``): the pipelines always pass a step count or a default ``linspace`` sigma
  list and a resolution-dependent ``mu``; they are all ignored. The student runs exactly the
  configured steps (``len(sigmas)``), which is what ``retrieve_timesteps`` then reports back.
- ``scheduler.config.get('use_dynamic_shifting' | 'base_shift' | ...)``: SD3 reads
  ``use_dynamic_shifting`` (``False`` here, so it computes no ``mu``); the FLUX pipelines compute a
  ``mu`` from the ``.get`` defaults, which :meth:`set_timesteps` ignores.
- ``timesteps`` (``1000 * sigma``), ``order`` (1), ``set_begin_index``, ``init_noise_sigma``,
  ``scale_noise`` (img2img), ``scale_model_input`` and ``step``.

Transition noise: the pipelines call ``step`` without a generator (their ``generator`` only draws
the initial latents), so :meth:`step` draws from ``generator`` when given, else from
:attr:`CPSScheduler.noise_generator` (settable), else from torch's global RNG. With the same
seeded generator the draws equal those of :class:`rtdmd.models.samplers.CPSSampler` (one
standard normal of the sample's shape per stochastic step, float32, in step order).

Loading an exported folder: its ``model_index.json`` names ``["rtdmd", "CPSScheduler"]``; diffusers
resolves a library that is not its own from ``sys.modules``, so ``import rtdmd`` before
``DiffusionPipeline.from_pretrained(folder)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from rtdmd.functional.flow import x0_from_velocity

from .cps import CPSTransition


@dataclass
class CPSSchedulerOutput(BaseOutput):
    """Output of :meth:`CPSScheduler.step`.

    Attributes:
        prev_sample: the CPS sample at the next sigma (the clean prediction after the last step).
        pred_original_sample: the step's clean prediction ``x - sigma v``.
    """

    prev_sample: Tensor
    pred_original_sample: Tensor


class CPSScheduler(SchedulerMixin, ConfigMixin):
    """Fixed few-step CPS schedule of a distilled rtdmd generator.

    Args:
        sigmas: the student's already-shifted sigmas without the trailing 0, strictly decreasing
            in (0, 1] (e.g. FLUX.2-klein at 512 px: ``[1.0, 0.958, 0.884, 0.718]``).
        eta: CPS stochasticity of the intermediate steps (0.9 in the release; 0 is Euler). The
            last step (to sigma 0) is always deterministic.
        num_train_timesteps: timestep scale: ``timesteps = sigmas * num_train_timesteps``.
        use_dynamic_shifting: always ``False``: present because pipelines read it from the
            config; the sigmas are never shifted again.
    """

    _compatibles: list = []
    order = 1

    @register_to_config
    def __init__(self, sigmas: Sequence[float] = (1.0, 0.75, 0.5, 0.25), eta: float = 0.9,
                 num_train_timesteps: int = 1000, use_dynamic_shifting: bool = False) -> None:
        values = [float(s) for s in sigmas]
        if not values or any(not 0.0 < s <= 1.0 for s in values) or any(
                a <= b for a, b in zip(values, values[1:], strict=False)):
            raise ValueError(f'sigmas must be non-empty, strictly decreasing and in (0, 1], '
                             f'got {values}')
        self._transition = CPSTransition(eta)  # validates eta
        if use_dynamic_shifting:
            raise ValueError('CPSScheduler never re-shifts its sigmas: use_dynamic_shifting must '
                             'be False')
        self.init_noise_sigma = 1.0
        #: RNG of the transition noise when ``step`` gets no ``generator``.
        self.noise_generator: torch.Generator | None = None
        self._set_schedule(None)

    def _set_schedule(self, device: str | torch.device | None) -> None:
        sigmas = torch.tensor(list(self.config.sigmas) + [0.0], dtype=torch.float32)
        self.sigmas = sigmas.to(device)
        self.timesteps = self.sigmas[:-1] * self.config.num_train_timesteps
        self.num_inference_steps = len(self.config.sigmas)
        self._step_index: int | None = None
        self._begin_index: int | None = None

    # ------------------------------------------------------------------ what pipelines call
    @property
    def step_index(self) -> int | None:
        """Index of the next step; ``None`` until the first ``step`` of a run."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None,
                      sigmas: Sequence[float] | None = None, mu: float | None = None,
                      timesteps: Sequence[float] | None = None, **ignored: object) -> None:
        """Reset to the configured schedule; every requested schedule argument is ignored.

        The pipelines pass a default step count (28), a ``linspace`` sigma list and a shift
        ``mu``; none of them applies to a few-step student, whose schedule is fixed.
        """
        self._set_schedule(device)

    def index_for_timestep(self, timestep: float | Tensor,
                           schedule_timesteps: Tensor | None = None) -> int:
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        timestep = torch.as_tensor(timestep, dtype=schedule.dtype, device=schedule.device)
        indices = (schedule == timestep).nonzero()
        if len(indices) == 0:
            raise ValueError(f'timestep {float(timestep)} is not one of the scheduler\'s '
                             f'timesteps {schedule.tolist()}')
        return int(indices[0])

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        return sample

    def scale_noise(self, sample: Tensor, timestep: float | Tensor,
                    noise: Tensor | None = None) -> Tensor:
        """Forward process ``(1 - sigma) x + sigma noise`` at ``timestep`` (img2img pipelines)."""
        t = torch.as_tensor(timestep).reshape(-1)
        sigma = torch.stack([self.sigmas[self.index_for_timestep(v)] for v in t.cpu()])
        sigma = sigma.to(sample.device, sample.dtype).reshape(-1, *([1] * (sample.ndim - 1)))
        return sigma * noise + (1.0 - sigma) * sample

    def step(self, model_output: Tensor, timestep: float | Tensor, sample: Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None,
             return_dict: bool = True, **ignored: object) -> CPSSchedulerOutput | tuple[Tensor]:
        """One CPS transition from the current sigma to the next.

        Args:
            model_output: the velocity prediction at ``(sample, sigma)``.
            timestep: the current one of :attr:`timesteps`.
            sample: the current latents.
            generator: RNG of the transition noise; default :attr:`noise_generator`.
            return_dict: return a :class:`CPSSchedulerOutput` rather than a tuple.

        Returns:
            the next latents (float32 math, cast back to ``sample``'s dtype), and with
            ``return_dict`` the step's clean prediction as well.
        """
        if self._step_index is None:
            self._step_index = (self._begin_index if self._begin_index is not None
                                else self.index_for_timestep(timestep))
        if self._step_index >= self.num_inference_steps:
            raise IndexError(f'step {self._step_index} past the {self.num_inference_steps}-step '
                             f'schedule; call set_timesteps before a new run')
        sigma = self.sigmas[self._step_index].to(sample.device)
        sigma_next = self.sigmas[self._step_index + 1].to(sample.device)
        noise = None
        if self._transition.is_stochastic(sigma_next):  # never the final step (to sigma 0)
            noise = randn_tensor(sample.shape, generator=generator or self.noise_generator,
                                 device=sample.device, dtype=torch.float32)
        prev_sample, _, _ = self._transition(sample, model_output, sigma, sigma_next, noise)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        x0 = x0_from_velocity(sample.float(), model_output.float(), sigma).to(sample.dtype)
        return CPSSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


__all__ = ['CPSScheduler', 'CPSSchedulerOutput']
