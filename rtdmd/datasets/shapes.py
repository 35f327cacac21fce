"""Datasets of the shapes world: rendered (image, prompt) pairs and prompts with metadata.

- :class:`ShapesImageDataset` renders item ``i`` on the fly from its own seed
  ``(seed, i)``: a GenEval tag drawn by ``tag_weights``, a prompt of that tag from the split, a
  scene satisfying it (:func:`~rtdmd.datasets.shapes_prompts.scene_for`). Items are a pure
  function of ``(seed, i)``, so any number of workers and any resume see the same data. Used to
  train the teachers, the VAEs and the fidelity feature network.
- :class:`ShapesPromptDataset` holds the split's prompts with their GenEval metadata (the format
  of :class:`~rtdmd.datasets.text_prompts.TextPromptDataset`), for distillation and the
  benchmark.

The grammar and the held-out split are documented in :mod:`rtdmd.datasets.shapes_prompts`,
the renderer in :mod:`rtdmd.datasets.shapes_world`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rtdmd.registry import DATASETS
from rtdmd.rewards.geneval_rules import TAGS

from .shapes_prompts import scene_for, shapes_prompts
from .shapes_world import IMAGE_SIZE, render


def _tag_groups(split: str, tags: Sequence[str] | None) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for item in shapes_prompts(split, tags):
        groups.setdefault(item['metadata']['tag'], []).append(item)
    return groups


@DATASETS.register_module()
class ShapesImageDataset(Dataset):
    """``num_samples`` rendered items ``{'image', 'prompt', 'metadata', 'index'}``.

    ``image`` is ``(3, S, S)`` float32 in [0, 1].

    Args:
        num_samples: dataset length (items are rendered on demand, nothing is stored).
        split: prompts to draw from (``'train'`` for training).
        tag_weights: relative frequency of each GenEval tag (default: equal); a tag with
            weight 0 or absent from the mapping is never drawn.
        seed: base seed; item ``i`` uses ``numpy.random.default_rng([seed, i])``.
        image_size: image side in pixels.
    """

    def __init__(self, num_samples: int = 1_000_000, split: str = 'train',
                 tag_weights: Mapping[str, float] | None = None, seed: int = 0,
                 image_size: int = IMAGE_SIZE) -> None:
        if num_samples < 1:
            raise ValueError(f'num_samples must be >= 1, got {num_samples}')
        weights = dict(tag_weights) if tag_weights is not None else dict.fromkeys(TAGS, 1.0)
        unknown = set(weights) - set(TAGS)
        if unknown or any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise ValueError(f'tag_weights must map GenEval tags {TAGS} to weights >= 0, not all '
                             f'0; got {weights}')
        self.groups = _tag_groups(split, [t for t, w in weights.items() if w > 0])
        self.tags = [t for t in TAGS if t in self.groups]
        probs = np.array([weights[t] for t in self.tags], dtype=np.float64)
        self.tag_probs = probs / probs.sum()
        self.num_samples = num_samples
        self.seed = seed
        self.image_size = image_size
        self.metainfo = dict(split=split, tags=self.tags, seed=seed, image_size=image_size)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        tag = self.tags[rng.choice(len(self.tags), p=self.tag_probs)]
        group = self.groups[tag]
        item = group[rng.integers(len(group))]
        scene = scene_for(item['metadata'], rng, self.image_size)
        pixels = render(scene, self.image_size)
        image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
        return {'image': image, 'prompt': item['prompt'], 'metadata': item['metadata'],
                'index': index}


@DATASETS.register_module()
class ShapesPromptDataset(Dataset):
    """Prompts of a split with GenEval metadata: items ``{'prompt', 'metadata', 'index'}``.

    Args:
        split: ``'train'``, ``'heldout'`` or ``'all'``.
        tags: keep these GenEval tags only (default all six).
        per_tag: if given, exactly this many items per tag, cycling through the tag's prompts in
            order (a balanced benchmark: every tag weighs the same whatever its prompt count).
    """

    def __init__(self, split: str = 'train', tags: Sequence[str] | None = None,
                 per_tag: int | None = None) -> None:
        groups = _tag_groups(split, tags)
        if per_tag is None:
            self.items = [item for group in groups.values() for item in group]
            self.items.sort(key=lambda it: TAGS.index(it['metadata']['tag']))
        else:
            if per_tag < 1:
                raise ValueError(f'per_tag must be >= 1, got {per_tag}')
            self.items = [groups[tag][i % len(groups[tag])] for tag in TAGS if tag in groups
                          for i in range(per_tag)]
        self.metainfo = dict(split=split, tags=[t for t in TAGS if t in groups])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        return {'prompt': item['prompt'], 'metadata': item['metadata'], 'index': index}


__all__ = ['ShapesImageDataset', 'ShapesPromptDataset']
