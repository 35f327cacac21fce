"""Figures of a shapes-world generator on a prompt set: accuracies, rewards, fidelity, cleanliness.

:func:`score_images` turns images and their prompts' metadata into the figures of the results
table: strict accuracy per GenEval tag and overall (the mean of the six tag accuracies, as
GenEval averages its tasks), GenEval accuracy, Flow-GRPO's partial score, the soft reward, the
fidelity distance to renderings of the same prompts, and the clean fraction. Every figure but
the distance is a mean over images, reported with its standard error.

:func:`teacher_samples` samples a teacher folder (a diffusers pipeline written by the teacher
config) through its backbone's teacher role with the Euler sampler, per-sample seeded
(:func:`~rtdmd.evaluation.generators.sample_per_seed`), exactly as a distillation run sees it.
"""

from __future__ import annotations

import json
import math
import os.path as osp
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rtdmd.models.samplers.cps import EulerSampler
from rtdmd.models.teachers.base import BACKBONE_RECORD
from rtdmd.rewards.geneval_rules import TAGS
from rtdmd.rewards.shapes import ShapesGenEvalReward, ShapesSoftReward

from .generators import sample_per_seed
from .shapes_fidelity import ShapesFeatureNet, fidelity_distance, load_feature_net


def _mean_se(values: Tensor) -> tuple[float, float]:
    values = values[~values.isnan()]
    n = values.numel()
    if n == 0:
        return math.nan, math.nan
    se = float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
    return float(values.mean()), se


def score_images(images: Tensor, metadata: Sequence[dict[str, Any]],
                 net: ShapesFeatureNet | None = None, reference_seed: int = 0
                 ) -> dict[str, float]:
    """The table's figures for ``images`` ``(N, 3, 32, 32)`` in [0, 1] of these prompts.

    Keys: ``strict/<tag>`` (and ``strict/<tag>_se``, ``n/<tag>``), ``strict`` (mean over the
    tags present), ``geneval_accuracy``, ``partial``, ``soft``, ``clean`` (each with ``_se``)
    and ``fidelity`` (Frechet distance to 4 renderings per prompt).
    """
    details = ShapesGenEvalReward().score_details(images, None, metadata)
    soft = ShapesSoftReward()(images, None, metadata)
    out: dict[str, float] = {}
    tag_means = []
    for tag in TAGS:
        values = details[f'strict_accuracy/{tag}']
        n = int((~values.isnan()).sum())
        if n:
            out[f'strict/{tag}'], out[f'strict/{tag}_se'] = _mean_se(values)
            out[f'n/{tag}'] = n
            tag_means.append(out[f'strict/{tag}'])
    out['strict'] = sum(tag_means) / len(tag_means)
    for key, values in (('geneval_accuracy', details['accuracy']), ('partial', details['']),
                        ('soft', soft.detach()), ('clean', details['clean'])):
        out[key], out[f'{key}_se'] = _mean_se(values.float())
    out['fidelity'] = fidelity_distance(images, metadata, net, seed=reference_seed)
    return out


def teacher_backbone_cfg(folder: str, **overrides: Any) -> dict[str, Any]:
    """The backbone config of a teacher folder (from its :data:`BACKBONE_RECORD`), float32."""
    record = osp.join(folder, BACKBONE_RECORD)
    if not osp.isfile(record):
        raise FileNotFoundError(f'{folder} has no {BACKBONE_RECORD}: is it a shapes teacher '
                                f'written by configs/teachers/shapes_<family>.py?')
    with open(record) as f:
        cfg = json.load(f)
    cfg.update(pretrained=osp.abspath(folder), dtype='float32', gradient_checkpointing=False,
               lora=dict(rank=4, alpha=8))
    cfg.update(overrides)
    return cfg


@torch.no_grad()
def teacher_samples(backbone: torch.nn.Module, prompts: Sequence[str], seeds: Sequence[int],
                    steps: int, guidance_scale: float, batch_size: int = 64) -> Tensor:
    """Teacher samples ``(N, 3, H, W)``: ``steps`` Euler steps with CFG, one seed per sample."""
    sampler = EulerSampler(num_steps=steps, guidance_scale=guidance_scale)
    chunks = [sample_per_seed(backbone, sampler, prompts[i:i + batch_size],
                              seeds[i:i + batch_size], role='teacher')
              for i in range(0, len(prompts), batch_size)]
    return torch.cat(chunks)


__all__ = ['BACKBONE_RECORD', 'load_feature_net', 'score_images', 'teacher_backbone_cfg',
           'teacher_samples']
