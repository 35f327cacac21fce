"""Loss terms of distribution matching: each a thin module around one functional/ function."""

from __future__ import annotations

from torch import Tensor, nn

from rtdmd.functional.ambient import ambient_dsm_loss
from rtdmd.functional.consistency import consistency_regularizer, consistency_regularizer_one_sample
from rtdmd.functional.dmd import dmd_gradient, dmd_surrogate_loss
from rtdmd.registry import LOSSES


@LOSSES.register_module()
class DMDLoss(nn.Module):
    """Generator DMD loss ``0.5 mean((x - sg(x - g))^2)`` with ``g = fake - real`` (float64).

    Args:
        normalize: divide ``g`` per sample by ``mean|x - real|`` (gradient normalisation).
        loss_weight: multiplier of the term.
    """

    def __init__(self, normalize: bool = True, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.normalize = normalize
        self.loss_weight = loss_weight

    def forward(self, x: Tensor, pred_fake: Tensor, pred_real: Tensor) -> Tensor:
        grad = dmd_gradient(x.detach(), pred_fake.detach(), pred_real.detach(), self.normalize)
        return self.loss_weight * dmd_surrogate_loss(x, grad)


@LOSSES.register_module()
class AmbientDSMLoss(nn.Module):
    """Fake-score regression on the ambient target, weighted ``min(1, max_weight sigma_ts^2)``.

    With ``s = 0`` (clean data) the target is the standard flow-matching target.
    """

    def __init__(self, move_scale_out: bool = True, max_weight: float = 10.0,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.move_scale_out = move_scale_out
        self.max_weight = max_weight
        self.loss_weight = loss_weight

    def forward(self, v_pred: Tensor, target: Tensor, sigma_ts: Tensor) -> Tensor:
        return self.loss_weight * ambient_dsm_loss(v_pred.float(), target.float(), sigma_ts,
                                                   self.move_scale_out, self.max_weight)


@LOSSES.register_module()
class ConsistencyLoss(nn.Module):
    """Consistency regulariser of the fake score (weight ``gamma``).

    Args:
        loss_weight: ``gamma`` (0.01 in the release).
        two_sample: the unbiased two-sample estimator (default); ``False`` uses the biased
            one-sample MSE, which also penalises the transition variance.
    """

    def __init__(self, loss_weight: float = 0.01, two_sample: bool = True) -> None:
        super().__init__()
        self.loss_weight = loss_weight
        self.two_sample = two_sample

    def forward(self, h1: Tensor, h2: Tensor, h_anchor: Tensor) -> Tensor:
        if self.two_sample:
            value = consistency_regularizer(h1.float(), h2.float(), h_anchor.float())
        else:
            value = consistency_regularizer_one_sample(h1.float(), h_anchor.float())
        return self.loss_weight * value
