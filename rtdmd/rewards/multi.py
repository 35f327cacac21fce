"""MultiReward: a weighted sum of registered scorers, each also reported on its own.

ALGORITHM.md §5.1: ``mean = Σ_k w_k · r_k`` per sample. RTDMD's GRPO path weights *advantages*
instead (§4.4), which needs every reward separately: ``score_all`` returns them by name, and
``weighted_sum`` combines an already computed dict, so no scorer runs twice. Reward
back-propagation can only use the differentiable members: ``differentiable_sum``.

Config::

    reward = dict(type='MultiReward', rewards=dict(
        brightness=dict(scorer=dict(type='ImageBrightnessReward'), weight=0.5),
        cat=dict(scorer=dict(type='ImageNetClassifierReward', class_index=281), weight=1.0)))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rtdmd.registry import REWARDS

from .base import RewardScorer
from .weights import WeightFiles, config_required_weights

_ENTRY_KEYS = frozenset({'scorer', 'weight'})


@REWARDS.register_module()
class MultiReward(RewardScorer):
    """``r = Σ_k w_k · r_k`` over named scorers.

    Args:
        rewards: ``{name: dict(scorer=<REWARDS config or RewardScorer>, weight=<float>)}``;
            ``weight`` defaults to 1.0. Names are the log keys of the individual rewards.
        name: log key of the weighted sum.
    """

    def __init__(self, rewards: Mapping[str, Mapping[str, Any]], name: str | None = None) -> None:
        super().__init__(name=name)
        if not isinstance(rewards, Mapping) or not rewards:
            raise ValueError('MultiReward needs a non-empty dict '
                             '{name: dict(scorer=<config>, weight=<float>)}, got '
                             f'{rewards!r}')
        scorers: dict[str, nn.Module] = {}
        self.weights: dict[str, float] = {}
        for key, entry in rewards.items():
            if not isinstance(key, str) or not key or '.' in key:
                raise ValueError(f'MultiReward: reward names must be non-empty strings without '
                                 f"'.', got {key!r}")
            if not isinstance(entry, Mapping) or 'scorer' not in entry:
                raise ValueError(f"MultiReward: rewards['{key}'] must be "
                                 f'dict(scorer=<config>, weight=<float>), got {entry!r}')
            unknown = set(entry) - _ENTRY_KEYS
            if unknown:
                raise ValueError(f"MultiReward: rewards['{key}'] has unknown keys "
                                 f'{sorted(unknown)}; allowed: {sorted(_ENTRY_KEYS)}')
            weight = entry.get('weight', 1.0)
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise ValueError(f"MultiReward: rewards['{key}'].weight must be a number, "
                                 f'got {weight!r}')
            scorer = entry['scorer']
            if isinstance(scorer, Mapping):
                scorer = REWARDS.build(dict(scorer))
            if not isinstance(scorer, nn.Module):
                raise TypeError(f"MultiReward: rewards['{key}'].scorer must be a REWARDS config "
                                f'or a RewardScorer, got {type(scorer).__name__}')
            scorers[key] = scorer
            self.weights[key] = float(weight)
        self.scorers = nn.ModuleDict(scorers)

    @classmethod
    def required_weights(cls, rewards: Mapping[str, Mapping[str, Any]],
                         **init_args: Any) -> list[WeightFiles]:
        """Those of the members given as configs, each entry naming its scorer; members given
        as built modules need nothing more. Malformed entries are left to the constructor."""
        needs: list[WeightFiles] = []
        for entry in rewards.values() if isinstance(rewards, Mapping) else ():
            scorer = entry.get('scorer') if isinstance(entry, Mapping) else None
            if isinstance(scorer, Mapping):
                needs += config_required_weights(scorer)
        return needs

    @classmethod
    def is_differentiable(cls, rewards: Mapping[str, Mapping[str, Any]],
                          **init_args: Any) -> bool:
        """True if any member (given as a config or a built scorer) is differentiable."""
        from .weights import config_is_differentiable

        for entry in rewards.values() if isinstance(rewards, Mapping) else ():
            scorer = entry.get('scorer') if isinstance(entry, Mapping) else None
            if isinstance(scorer, Mapping) and config_is_differentiable(scorer):
                return True
            if isinstance(scorer, nn.Module) and getattr(scorer, 'differentiable', False):
                return True
        return False

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        """True if any member is differentiable (``differentiable_sum`` uses only those)."""
        return any(getattr(s, 'differentiable', False) for s in self.scorers.values())

    @property
    def differentiable_names(self) -> list[str]:
        return [k for k, s in self.scorers.items() if getattr(s, 'differentiable', False)]

    def score_all(self, samples: Tensor, prompts: Sequence[Any] | Tensor | None = None,
                  metadata: Sequence[dict] | None = None,
                  names: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Unweighted ``{name: (B,)}`` rewards of every member (or of ``names``)."""
        names = list(self.scorers) if names is None else list(names)
        missing = [n for n in names if n not in self.scorers]
        if missing:
            raise KeyError(f'MultiReward: unknown reward names {missing}; '
                           f'have {list(self.scorers)}')
        scores = {}
        for key in names:
            score = self.scorers[key](samples, prompts, metadata)
            if score.ndim != 1 or score.shape[0] != samples.shape[0]:
                raise ValueError(f"MultiReward: reward '{key}' returned shape "
                                 f'{tuple(score.shape)}, expected ({samples.shape[0]},)')
            scores[key] = score.float()
        return scores

    def weighted_sum(self, scores: Mapping[str, Tensor]) -> Tensor:
        """``Σ_k w_k · scores[k]`` over the names present in ``scores``."""
        if not scores:
            raise ValueError('MultiReward.weighted_sum: no scores given')
        unknown = [k for k in scores if k not in self.weights]
        if unknown:
            raise KeyError(f'MultiReward: unknown reward names {unknown}; '
                           f'have {list(self.weights)}')
        return torch.stack([self.weights[k] * v for k, v in scores.items()]).sum(dim=0)

    def forward(self, samples: Tensor, prompts: Sequence[Any] | Tensor | None = None,
                metadata: Sequence[dict] | None = None) -> Tensor:
        return self.weighted_sum(self.score_all(samples, prompts, metadata))

    def differentiable_sum(self, samples: Tensor, prompts: Sequence[Any] | Tensor | None = None,
                           metadata: Sequence[dict] | None = None) -> Tensor:
        """Weighted sum over the differentiable members only (the reward back-prop objective)."""
        names = self.differentiable_names
        if not names:
            raise ValueError(f'MultiReward: none of {list(self.scorers)} is differentiable; '
                             'reward back-propagation needs at least one')
        return self.weighted_sum(self.score_all(samples, prompts, metadata, names=names))
