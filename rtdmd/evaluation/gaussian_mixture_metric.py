"""Ground-truth metrics of the analytic world: the exact teacher is known, so is the truth."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from mmengine.evaluator import BaseMetric

from rtdmd.models.backbones.gaussian_mixture import GaussianMixtureTeacher
from rtdmd.registry import METRICS

from .sliced_wasserstein import fixed_projections, sliced_wasserstein2


@METRICS.register_module()
class GaussianMixtureMetric(BaseMetric):
    """SW2 to exact teacher samples (with its noise floor), mode weights, off-support mass.

    Per class ``c`` with ``N`` generated samples:

    - ``sw2``: sliced W2 (``num_projections`` fixed directions) between the samples and ``N``
      exact teacher samples, averaged over ``reference_draws`` reference sets and over classes;
    - ``sw2_floor``: the same between two exact sample sets of size ``N`` (what a perfect
      model scores);
    - ``mode_tv``: total variation between the mode weights of the samples (nearest component
      by posterior responsibility) and the class weights;
    - ``off_support``: fraction of samples whose teacher log-density is below the 0.1% quantile
      of the log-density of exact samples.
    """

    default_prefix = 'toy'

    def __init__(self, world: dict[str, Any], num_projections: int = 256,
                 reference_draws: int = 5, seed: int = 0, collect_device: str = 'cpu',
                 prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.teacher = GaussianMixtureTeacher.from_world(world)
        self.projections = fixed_projections(self.teacher.dim, num_projections, seed)
        self.reference_draws = reference_draws
        self.seed = seed

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for item in data_samples:
            self.results.append((item['sample'].float().cpu(), int(item['prompt'])))

    def compute_metrics(self, results: list) -> dict[str, float]:
        samples = torch.stack([r[0] for r in results])
        classes = torch.tensor([r[1] for r in results])
        per_class = [self.class_metrics(samples[classes == c], c) for c in classes.unique()]
        return {k: float(sum(m[k] for m in per_class) / len(per_class)) for k in per_class[0]}

    def class_metrics(self, x: torch.Tensor, c: int) -> dict[str, float]:
        gen = torch.Generator().manual_seed(self.seed + 1000 * int(c))
        n = x.shape[0]
        cls = torch.full((n,), int(c), dtype=torch.long)
        refs = [self.teacher.sample(cls, gen) for _ in range(self.reference_draws + 1)]
        sw2 = torch.stack([sliced_wasserstein2(x, r, self.projections) for r in refs[1:]])
        floor = torch.stack([sliced_wasserstein2(refs[0], r, self.projections)
                             for r in refs[1:]])
        zero = torch.zeros(n)
        resp, _, _ = self.teacher.posterior(x, zero, cls)
        modes = torch.bincount(resp.argmax(1), minlength=resp.shape[1]).double() / n
        tv = 0.5 * (modes - self.teacher.weights[int(c)].double()).abs().sum()
        threshold = torch.quantile(self.teacher.log_prob(refs[0], zero, cls), 0.001)
        off = (self.teacher.log_prob(x, zero, cls) < threshold).double().mean()
        return dict(sw2=float(sw2.mean()), sw2_floor=float(floor.mean()), mode_tv=float(tv),
                    off_support=float(off))
