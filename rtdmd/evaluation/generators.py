"""What the benchmark harness evaluates: ``generate(prompts, seeds) -> images``.

Three kinds of model sit behind the same call, each seeded **per sample**: image ``i`` depends
only on its prompt and its own seed, never on the rest of the batch. So an interrupted
evaluation resumes with exactly the images it would have made, and the batch size does not
change the result (up to the numerics of batched matrix products).

- :class:`StudentGenerator`: a trained distiller's few-step CPS sampler (the checkpoint's EMA
  generator by default), at its training schedule and eta.
- :class:`TeacherGenerator`: the frozen teacher with an N-step Euler ODE sampler and real CFG
  (FLUX.1-dev: the guidance embedding), the reference the paper compares against.
- :class:`PipelineGenerator`: a pipeline directory written by ``tools/export.py``, run through
  diffusers with the call arguments recorded at export.

Per-sample noise: sample ``i`` owns a CPU ``torch.Generator`` seeded with ``seeds[i]``; it draws
the initial latent and then one transition noise per stochastic step, in step order. That is
also how diffusers draws from a list of generators (``randn_tensor``: one ``(1, ...)`` draw per
generator), so a student and its exported pipeline make the same images from the same seeds.
The release seeds one generator per batch instead (``eval_seed + rank``); its images therefore
depend on the batching, ours do not.
"""

from __future__ import annotations

import json
import os.path as osp
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rtdmd.models.samplers.cps import CPSSampler, EulerSampler
from rtdmd.models.samplers.noise import PerSampleNoise

#: Name of the provenance file ``tools/export.py`` writes next to ``model_index.json``.
EXPORT_RECORD = 'rtdmd_export.json'


def sample_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded with its seed."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def sample_per_seed(backbone: nn.Module, sampler: CPSSampler, prompts: Sequence[Any],
                    seeds: Sequence[int], role: str = 'generator') -> Tensor:
    """Decoded samples of ``role`` with ``sampler``, each from its own seed (see module doc)."""
    if len(prompts) != len(seeds):
        raise ValueError(f'{len(prompts)} prompts but {len(seeds)} seeds')
    cond = backbone.encode_prompts(list(prompts))
    rollout = sampler.rollout(backbone, cond, PerSampleNoise(seeds), role=role)
    return backbone.decode(rollout.sample).float()


class StudentGenerator:
    """The distiller's few-step generator (its own sampler: step list, eta, guidance)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, prompts: Sequence[Any], seeds: Sequence[int]) -> Tensor:
        return sample_per_seed(self.model.backbone, self.model.sampler, prompts, seeds)

    def settings(self) -> dict[str, Any]:
        sampler, backbone = self.model.sampler, self.model.backbone
        return dict(model='student', sampler=type(sampler).__name__,
                    step_list=list(sampler.step_list), eta=float(sampler.eta),
                    guidance_scale=float(sampler.guidance_scale),
                    sigmas=[round(float(s), 6) for s in sampler.sigmas(backbone)],
                    resolution=getattr(backbone, 'resolution', None))


class TeacherGenerator:
    """The frozen teacher: ``steps`` Euler steps with CFG ``guidance_scale``."""

    def __init__(self, model: nn.Module, steps: int, guidance_scale: float) -> None:
        if steps < 1:
            raise ValueError(f'teacher steps must be >= 1, got {steps}')
        self.model = model
        self.sampler = EulerSampler(num_steps=steps, guidance_scale=guidance_scale)

    def __call__(self, prompts: Sequence[Any], seeds: Sequence[int]) -> Tensor:
        return sample_per_seed(self.model.backbone, self.sampler, prompts, seeds, role='teacher')

    def settings(self) -> dict[str, Any]:
        backbone = self.model.backbone
        return dict(model='teacher', sampler='EulerSampler', steps=self.sampler.num_steps,
                    guidance_scale=float(self.sampler.guidance_scale),
                    sigmas=[round(float(s), 6) for s in self.sampler.sigmas(backbone)],
                    resolution=getattr(backbone, 'resolution', None))


class PipelineGenerator:
    """An exported pipeline directory (``tools/export.py``), called as recorded at export.

    Args:
        path: the pipeline directory (``model_index.json`` + ``rtdmd_export.json``).
        device: where to run it.
        call_kwargs: overrides of the recorded call arguments (e.g. ``height``/``width``).
    """

    def __init__(self, path: str, device: str = 'cpu',
                 call_kwargs: dict[str, Any] | None = None) -> None:
        from diffusers import DiffusionPipeline

        import rtdmd.models.samplers.cps_scheduler  # noqa: F401  (diffusers finds CPSScheduler)

        record_file = osp.join(path, EXPORT_RECORD)
        if not osp.isfile(osp.join(path, 'model_index.json')) or not osp.isfile(record_file):
            raise FileNotFoundError(f'{path} is not a standalone pipeline exported by '
                                    f'tools/export.py --merged --copy-unchanged (expected '
                                    f'model_index.json and {EXPORT_RECORD} in it)')
        with open(record_file) as f:
            self.record = json.load(f)
        self.path = path
        # trust_remote_code: the export's pipeline.py (diffusers only) holds its call defaults.
        self.pipe = DiffusionPipeline.from_pretrained(path, trust_remote_code=True).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.call_kwargs = dict(self.record['call_kwargs'], **(call_kwargs or {}))

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Any], seeds: Sequence[int]) -> Tensor:
        gens = sample_generators(seeds)
        # The pipeline's generator list draws the initial latents; the scheduler's transition
        # noise continues each sample's own stream.
        self.pipe.scheduler.noise_generator = gens
        try:
            out = self.pipe(prompt=list(prompts), generator=gens, output_type='pt',
                            **self.call_kwargs)
        finally:
            self.pipe.scheduler.noise_generator = None
        return out.images.float()

    def settings(self) -> dict[str, Any]:
        return dict(model='pipeline', path=osp.abspath(self.path),
                    checkpoint=self.record.get('checkpoint'), sigmas=self.record.get('sigmas'),
                    eta=self.record.get('eta'), call_kwargs=self.call_kwargs)


__all__ = ['EXPORT_RECORD', 'PipelineGenerator', 'StudentGenerator', 'TeacherGenerator',
           'sample_generators', 'sample_per_seed']
