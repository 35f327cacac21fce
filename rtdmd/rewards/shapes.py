"""Computed rewards of the shapes world: a GenEval-style score and a differentiable soft score.

- :class:`ShapesGenEvalReward` runs the programmatic detector
  (:mod:`rtdmd.evaluation.shapes_detector`) and GenEval's rules: Flow-GRPO's partial score as the
  reward, GenEval and strict accuracies (overall and per tag) and the clean flag as details.
  Not differentiable (the GRPO path uses it).
- :class:`ShapesSoftReward` scores the colour mass of an image against the prompt's metadata,
  differentiably (reward back-propagation uses it). Each pixel ``p`` is softly assigned to the
  palette colours by its residual to each colour's blend line ``bg + alpha (c - bg)``
  (``softmax(-residual^2 / 2 T^2)``), and carries ``alpha`` of that colour's mass. Terms, each
  in [0, 1], averaged:

  * area, per colour the prompt names: ``2 M A / (M^2 + A^2)`` with ``M`` the
    colour's mass and ``A`` the expected area of the objects asked in it (``count * a(shape)``
    summed); objects without a colour form one group whose mass is that of all colours the
    prompt does not name;
  * purity, when the prompt names colours: one minus the share of mass in colours it does not
    name;
  * position: ``sigmoid((d - 4) / 2)`` of the centroid offset ``d`` (px) of the subject's
    colour from the reference's in the relation's direction; skipped when both have the same
    colour (their masses cannot be told apart).

  It sees colour and place, not shape; the GenEval-style reward checks shapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from rtdmd.datasets.shapes_world import (
    BACKGROUND,
    COLOR_NAMES,
    MAX_SIZE,
    MIN_SIZE,
    PALETTE,
    SHAPES,
)
from rtdmd.evaluation.shapes_detector import clean_image, components, score_metadata, segment
from rtdmd.registry import REWARDS

from .base import MAIN_SCORE, RewardScorer
from .geneval_rules import TAGS, GenEvalMetadataError, validate_metadata

_MEAN_BOX_AREA = sum(s * s for s in range(MIN_SIZE, MAX_SIZE + 1)) / (MAX_SIZE - MIN_SIZE + 1)
#: Expected area (px) of one object of each shape: the mean box area times the shape's fill.
SHAPE_AREA = {'circle': math.pi / 4 * _MEAN_BOX_AREA, 'square': _MEAN_BOX_AREA,
              'triangle': 0.5 * _MEAN_BOX_AREA}
_DIRECTIONS = {'left of': (-1.0, 0.0), 'right of': (1.0, 0.0), 'above': (0.0, -1.0),
               'below': (0.0, 1.0)}


def _check_metadata(samples: Tensor, metadata: Sequence[dict] | None, who: str) -> None:
    if samples.ndim != 4 or samples.shape[1] != 3:
        raise ValueError(f'expected images (B, 3, H, W), got shape {tuple(samples.shape)}')
    if metadata is None or len(metadata) != samples.shape[0]:
        raise GenEvalMetadataError(
            f'{who} needs one GenEval metadata dict per image ({samples.shape[0]}), got '
            f'{"none" if metadata is None else len(metadata)}; use ShapesPromptDataset (field '
            f'"metadata" of each item)')
    for i, meta in enumerate(metadata):
        validate_metadata(meta, SHAPES, i)


@REWARDS.register_module()
class ShapesGenEvalReward(RewardScorer):
    """GenEval-style reward of the shapes world (partial score; accuracies as details).

    :meth:`score_details` returns ``''`` (partial score, <= 1), ``accuracy`` (GenEval),
    ``strict_accuracy`` (exact counts), ``accuracy/<tag>`` and ``strict_accuracy/<tag>`` (NaN for
    samples of another tag) and ``clean`` (1 if the image is clean), each ``(B,)`` float32.

    Args:
        name: key under which the reward is logged.
    """

    differentiable = False
    upper_bound = 1.0

    def score_details(self, samples: Tensor, prompts: Sequence[Any] | Tensor | None = None,
                      metadata: Sequence[dict] | None = None) -> dict[str, Tensor]:
        _check_metadata(samples, metadata, type(self).__name__)
        rows = []
        for i, (seg, meta) in enumerate(zip(segment(samples), metadata, strict=True)):
            objects, _ = components(seg)
            rows.append((*score_metadata(objects, meta, i), clean_image(seg)))
        partial, acc, strict, clean = (torch.tensor(c, dtype=torch.float32,
                                                    device=samples.device)
                                       for c in zip(*rows, strict=True))
        details = {MAIN_SCORE: partial, 'accuracy': acc, 'strict_accuracy': strict,
                   'clean': clean}
        tags = [m['tag'] for m in metadata]
        for tag in TAGS:
            is_tag = torch.tensor([t == tag for t in tags], device=samples.device)
            nan = torch.full_like(acc, math.nan)
            details[f'accuracy/{tag}'] = torch.where(is_tag, acc, nan)
            details[f'strict_accuracy/{tag}'] = torch.where(is_tag, strict, nan)
        return details


def soft_color_mass(images: Tensor, temperature: float = 20.0) -> Tensor:
    """``(B, K, H, W)`` soft mass of each palette colour (``COLOR_NAMES`` order), <= 1.

    Differentiable in ``images`` ``(B, 3, H, W)`` in [0, 1] (see module docstring).
    """
    bg = images.new_tensor(BACKGROUND) / 255
    dirs = images.new_tensor([PALETTE[c] for c in COLOR_NAMES]) / 255 - bg  # (K, 3)
    images = images if images.dtype == torch.float64 else images.float()
    bg, dirs = bg.to(images.dtype), dirs.to(images.dtype)
    d = images.permute(0, 2, 3, 1) - bg  # (B, H, W, 3)
    proj = (d @ dirs.T) / dirs.pow(2).sum(1)  # (B, H, W, K)
    # Leaky below 0 (slope 0.01): a background pixel (proj ~ 0, either sign) still passes a
    # gradient towards every colour, so reward back-propagation can grow a missing object.
    alpha = torch.where(proj < 0, 0.01 * proj, proj.clamp(max=1))
    residual2 = (d[..., None, :] - alpha[..., None] * dirs).pow(2).sum(-1) * 255 ** 2
    weights = torch.softmax(-residual2 / (2 * temperature ** 2), dim=-1)
    return (weights * alpha).permute(0, 3, 1, 2)


def _area_term(mass: Tensor, target: float) -> Tensor:
    # 2 M A / (M^2 + A^2): 1 at M = A, 0.8 at a factor 2 off, and a non-zero slope at M = 0,
    # so an image with nothing in the colour still gets a gradient (M may be slightly < 0).
    return 2 * mass * target / (mass ** 2 + target ** 2)


def _centroid(mass: Tensor) -> Tensor:
    """``(2,)`` (x, y) centroid of an ``(H, W)`` mass map."""
    mass = mass.clamp_min(0)
    h, w = mass.shape
    ys = torch.arange(h, dtype=mass.dtype, device=mass.device) + 0.5
    xs = torch.arange(w, dtype=mass.dtype, device=mass.device) + 0.5
    total = mass.sum() + 1.0  # one pixel of slack: an empty map gives a finite centroid
    return torch.stack([(mass.sum(0) * xs).sum() / total, (mass.sum(1) * ys).sum() / total])


def soft_score(mass: Tensor, metadata: Mapping[str, Any]) -> Tensor:
    """The soft reward of one image's ``(K, H, W)`` colour mass for its metadata (a scalar)."""
    index = {c: i for i, c in enumerate(COLOR_NAMES)}
    totals = mass.sum(dim=(1, 2))  # (K,)
    include = metadata['include']
    named = {req['color'] for req in include if 'color' in req}
    claimed = sum(totals[index[c]] for c in named) if named else totals.new_zeros(())
    targets: dict[str | None, float] = {}
    for req in include:  # one area term per colour (None: the colours the prompt leaves free)
        color = req.get('color')
        targets[color] = targets.get(color, 0.0) + req['count'] * SHAPE_AREA[req['class']]
    terms = [_area_term(totals[index[c]] if c else totals.sum() - claimed, target)
             for c, target in targets.items()]
    if named:
        terms.append(1 - (totals.sum() - claimed) / (totals.abs().sum() + 1.0))
    for req in include:
        if 'position' not in req:
            continue
        relation, group = req['position']
        ref = include[group]
        if 'color' not in req or 'color' not in ref or req['color'] == ref['color']:
            continue
        offset = _centroid(mass[index[req['color']]]) - _centroid(mass[index[ref['color']]])
        d = (offset * offset.new_tensor(_DIRECTIONS[relation])).sum()
        terms.append(torch.sigmoid((d - 4.0) / 2.0))
    return torch.stack(terms).mean()


@REWARDS.register_module()
class ShapesSoftReward(RewardScorer):
    """Differentiable colour-mass reward of the shapes world, in [0, 1] (module docstring).

    Args:
        temperature: softness (0-255 units) of the colour assignment by blend residual.
        name: key under which the reward is logged.
    """

    differentiable = True
    upper_bound = 1.0

    def __init__(self, temperature: float = 20.0, name: str | None = None) -> None:
        super().__init__(name)
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        self.temperature = temperature

    def forward(self, samples: Tensor, prompts: Sequence[Any] | Tensor | None = None,
                metadata: Sequence[dict] | None = None) -> Tensor:
        _check_metadata(samples, metadata, type(self).__name__)
        mass = soft_color_mass(samples, self.temperature)
        return torch.stack([soft_score(m, meta) for m, meta in zip(mass, metadata, strict=True)])


__all__ = ['SHAPE_AREA', 'ShapesGenEvalReward', 'ShapesSoftReward', 'soft_color_mass',
           'soft_score']
