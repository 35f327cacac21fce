"""Ground-truth metrics of the analytic world as an mmengine metric (validation / test)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from mmengine.evaluator import BaseMetric

from rtdmd.models.backbones.gaussian_mixture import GaussianMixtureTeacher
from rtdmd.registry import METRICS

from .analytic_report import evaluate_models


@METRICS.register_module()
class GaussianMixtureMetric(BaseMetric):
    """SW2 to exact teacher samples (with its noise floor), mode weights, off-support mass.

    The values are :func:`rtdmd.evaluation.analytic_report.evaluate_models`' teacher metrics
    (``sw2_teacher``, ``sw2_floor``, ``mode_tv_teacher``, ``off_support``), averaged over the
    classes present, with ``num_projections`` fixed directions and ``reference_draws`` exact
    reference sets of the same size per class.
    """

    default_prefix = 'toy'

    def __init__(self, world: dict[str, Any], num_projections: int = 256,
                 reference_draws: int = 5, seed: int = 0, collect_device: str = 'cpu',
                 prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.teacher = GaussianMixtureTeacher.from_world(world)
        self.num_projections = num_projections
        self.reference_draws = reference_draws
        self.seed = seed

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for item in data_samples:
            self.results.append((item['sample'].float().cpu(), int(item['prompt'])))

    def compute_metrics(self, results: list) -> dict[str, float]:
        samples = torch.stack([r[0] for r in results])
        classes = torch.tensor([r[1] for r in results])
        metrics = evaluate_models(self.teacher, None, {'model': (samples, classes)}, beta=None,
                                  beta_grid_max=1.0, num_projections=self.num_projections,
                                  reference_draws=self.reference_draws, seed=self.seed)
        return metrics['model']
