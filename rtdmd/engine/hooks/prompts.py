"""Prompts of the hooks that sample the generator (sample grids, reward-hacking monitors)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ['as_prompts', 'distinct_prompts']

#: Dataset items scanned for distinct prompts.
MAX_SCAN = 100_000


def distinct_prompts(dataset: Any, limit: int | None = None) -> tuple[list[Any], list[Any]]:
    """Distinct prompts of a dataset in order (the first ``limit`` of them, default all among
    its first :data:`MAX_SCAN` items), with the metadata of each one's first item."""
    found: dict[Any, Any] = {}  # insertion-ordered
    for index in range(min(len(dataset), MAX_SCAN)):
        item = dataset[index]
        prompt = item['prompt']
        found.setdefault(int(prompt) if isinstance(prompt, Tensor) else prompt,
                         item.get('metadata'))
        if limit is not None and len(found) == limit:
            break
    return list(found), list(found.values())


def as_prompts(prompts: list[Any]) -> list[Any] | Tensor:
    """Class ids as a tensor (the analytic world's prompts), text as a list."""
    if all(isinstance(p, int) for p in prompts):
        return torch.tensor(prompts, dtype=torch.long)
    return prompts
