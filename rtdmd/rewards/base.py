"""The reward-scorer interface shared by the toy rewards and the image reward models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .weights import WeightFiles

#: Key of the reward itself in :meth:`RewardScorer.score_details`.
MAIN_SCORE = ''


class RewardScorer(nn.Module):
    """``scorer(samples, prompts, metadata=None) -> (B,)`` rewards.

    Attributes:
        differentiable: whether gradients of the reward w.r.t. the samples are meaningful, i.e.
            whether reward back-propagation may use it (the GRPO path may use any reward).
        name: key under which the reward is logged.
        upper_bound: ``sup r`` when it is finite and known (``None`` otherwise); exact
            tilted sampling by rejection needs it.
    """

    differentiable: bool = False
    upper_bound: float | None = None

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self.name = name or type(self).__name__

    @classmethod
    def required_weights(cls, **init_args: Any) -> list[WeightFiles]:
        """The weight files a scorer built with these constructor arguments reads.

        ``init_args`` are the constructor's arguments with its defaults applied (what
        :func:`~rtdmd.rewards.weights.check_reward_weights` passes). A learned scorer's
        constructor checks exactly this list (:func:`~rtdmd.rewards.weights.require_weights`),
        so the pre-flight check and the build agree; overrides take the arguments they need by
        name and ignore the rest. Default: none (toy and analytic scorers read no files).
        """
        return []

    @classmethod
    def is_differentiable(cls, **init_args: Any) -> bool:
        """Whether a scorer built with these constructor arguments is differentiable (what
        ``differentiable`` will say), known before building it. Default: the class attribute."""
        return bool(cls.differentiable)

    def forward(self, samples: Tensor, prompts: Sequence[Any] | Tensor,
                metadata: Sequence[dict] | None = None) -> Tensor:
        """Rewards ``(B,)``. A scorer implements this or :meth:`score_details`; the default reads
        the reward off :meth:`score_details`."""
        if type(self).score_details is RewardScorer.score_details:
            raise NotImplementedError(f'{type(self).__name__} implements neither forward nor '
                                      f'score_details')
        return self.score_details(samples, prompts, metadata)[MAIN_SCORE]

    def score_details(self, samples: Tensor, prompts: Sequence[Any] | Tensor,
                      metadata: Sequence[dict] | None = None) -> dict[str, Tensor]:
        """The reward and any extra per-sample figures the scorer reports, in one pass.

        Returns ``{MAIN_SCORE: (B,) reward, key: (B,) figure, ...}``; the benchmark harness
        reports an extra figure as ``<reward name>/<key>``. A NaN in an extra figure means "does
        not apply to this sample" (e.g. a per-tag accuracy for a prompt of another tag) and is
        left out of that figure's statistics. The default has the reward only; a scorer that
        overrides this gets :meth:`forward` for free.
        """
        return {MAIN_SCORE: self(samples, prompts, metadata)}
