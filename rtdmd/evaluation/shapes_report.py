"""Figures of a shapes-world generator on a prompt set: accuracies, rewards, fidelity, cleanliness.

:func:`score_images` turns images and their prompts' metadata into the figures of the results
table: strict accuracy per GenEval tag and overall (the mean of the six tag accuracies, as
GenEval averages its tasks), GenEval accuracy, Flow-GRPO's partial score, the soft reward, the
fidelity distance to renderings of the same prompts, and the clean fraction. Every figure but
the distance is a mean over images, reported with its standard error. :func:`score_record`
keeps what the figures are made of, per image (scores, classifier features, the reference
renderings' features), for :mod:`~rtdmd.evaluation.shapes_bootstrap`'s intervals;
:func:`summarise_record` computes the figures from it with the bootstrap's own statistics.

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

import numpy as np
import torch
from torch import Tensor

from rtdmd.models.samplers.cps import EulerSampler
from rtdmd.models.teachers.base import BACKBONE_RECORD
from rtdmd.rewards.base import MAIN_SCORE
from rtdmd.rewards.geneval_rules import TAGS
from rtdmd.rewards.shapes import ShapesGenEvalReward, ShapesSoftReward

from .generators import sample_per_seed
from .shapes_bootstrap import MEAN_COLUMNS, run_statistics
from .shapes_fidelity import ShapesFeatureNet, embed, load_feature_net, render_references


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    n = values.size
    if n == 0:
        return math.nan, math.nan
    se = float(values.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return float(values.mean()), se


def score_record(images: Tensor, metadata: Sequence[dict[str, Any]],
                 prompt_index: Sequence[int] | None = None, net: ShapesFeatureNet | None = None,
                 reference_seed: int = 0, copies: int = 4) -> dict[str, np.ndarray]:
    """Per-image scores and features of ``images`` ``(N, 3, 32, 32)`` in [0, 1].

    The record of :data:`~rtdmd.evaluation.shapes_bootstrap.FIELDS`: image ``i`` shows prompt
    ``prompt_index[i]`` (default: its own); ``copies`` renderings of each entry of
    ``metadata`` are the fidelity reference (rendering ``j`` of entry ``i`` seeded
    ``[reference_seed, j, i]``, :func:`render_references`), each tagged with its prompt.
    """
    details = ShapesGenEvalReward().score_details(images, None, metadata)
    soft = ShapesSoftReward()(images, None, metadata)
    net = net or load_feature_net()
    prompt = np.arange(len(metadata)) if prompt_index is None else np.asarray(prompt_index)
    if prompt.shape != (len(metadata),):
        raise ValueError(f'prompt_index: one prompt per image ({len(metadata)}), got '
                         f'{prompt.shape}')
    reference = render_references(metadata, reference_seed, copies)
    scores = {k: v.detach().double().cpu().numpy() for k, v in details.items()}
    return dict(prompt=prompt, tag=np.array([TAGS.index(m['tag']) for m in metadata]),
                strict=scores['strict_accuracy'], partial=scores[MAIN_SCORE],
                soft=soft.detach().double().cpu().numpy(), clean=scores['clean'],
                geneval_accuracy=scores['accuracy'], features=embed(net, images),
                reference_prompt=np.tile(prompt, copies), reference_features=embed(net, reference))


def summarise_record(record: dict[str, np.ndarray]) -> dict[str, float]:
    """The table's figures of one record: every column of
    :func:`~rtdmd.evaluation.shapes_bootstrap.run_statistics` on the full set, with standard
    errors over images (``<column>_se``) and the images per tag (``n/<tag>``)."""
    full = np.ones((1, int(record['prompt'].max()) + 1), dtype=np.int64)
    out = {column: float(values[0]) for column, values in run_statistics(record, full).items()}
    for i, tag in enumerate(TAGS):
        if f'strict/{tag}' in out:
            mask = record['tag'] == i
            out[f'strict/{tag}_se'] = _mean_se(record['strict'][mask])[1]
            out[f'n/{tag}'] = int(mask.sum())
    for column in MEAN_COLUMNS:
        out[f'{column}_se'] = _mean_se(record[column])[1]
    return out


def score_images(images: Tensor, metadata: Sequence[dict[str, Any]],
                 net: ShapesFeatureNet | None = None, reference_seed: int = 0
                 ) -> dict[str, float]:
    """The table's figures for ``images`` ``(N, 3, 32, 32)`` in [0, 1] of these prompts.

    Keys: ``strict/<tag>`` (and ``strict/<tag>_se``, ``n/<tag>``), ``strict`` (mean over the
    tags present), ``geneval_accuracy``, ``partial``, ``soft``, ``clean`` (each with ``_se``)
    and ``fidelity`` (Frechet distance to 4 renderings per prompt).
    """
    return summarise_record(score_record(images, metadata, net=net,
                                         reference_seed=reference_seed))


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


__all__ = ['BACKBONE_RECORD', 'load_feature_net', 'score_images', 'score_record',
           'summarise_record', 'teacher_backbone_cfg', 'teacher_samples']
