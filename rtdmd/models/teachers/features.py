"""Training the fidelity feature network of the shapes world (configs/evaluation/)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from torch import Tensor

from rtdmd.registry import MODELS
from rtdmd.utils.rng import stream


@MODELS.register_module()
class ShapesFeatureTrainer(BaseModel):
    """Trains :class:`~rtdmd.evaluation.shapes_fidelity.ShapesFeatureNet` on renderings.

    ``loss_count``: cross-entropy of the objects per colour-shape pair (0-4, 15 heads);
    ``loss_grid``: cross-entropy of the dominant colour of each 4 x 4 grid cell (targets read
    off each rendering by the detector, exact on renderings, before any corruption);
    ``loss_corruption``: cross-entropy of which corruption (if any) the image then received
    (:func:`~rtdmd.evaluation.shapes_fidelity.corrupt`, half the images). Diagnostics:
    ``count_acc``, ``grid_acc``, ``corruption_acc``. Draws come from a counter-based stream.

    Args:
        width: the network's first-stage channels.
        feature_dim: the embedding size.
        seed: seed of the corruption stream.
    """

    def __init__(self, width: int = 16, feature_dim: int = 64, seed: int = 0) -> None:
        # Lazy: rtdmd.evaluation's package imports rtdmd.models.
        from rtdmd.evaluation.shapes_fidelity import ShapesFeatureNet

        super().__init__()
        self.net = ShapesFeatureNet(width, feature_dim)
        self.seed = seed
        self.register_buffer('iteration', torch.zeros((), dtype=torch.long))

    def train_step(self, data: dict, optim_wrapper: OptimWrapper) -> dict[str, Tensor]:
        images = data['image']
        images = torch.stack(list(images)) if isinstance(images, (list, tuple)) else images
        from rtdmd.evaluation.shapes_fidelity import corrupt, feature_targets

        count_target, grid_target = feature_targets(images)
        images, kind = corrupt(images.float(), stream(self.seed, int(self.iteration), 'corrupt'))
        device = next(self.net.parameters()).device
        counts, grid, corruption = self.net(images.to(device))
        count_target, grid_target = count_target.to(device), grid_target.to(device)
        kind = kind.to(device)
        losses = {'loss_count': F.cross_entropy(counts.flatten(0, 1), count_target.flatten()),
                  'loss_grid': F.cross_entropy(grid.flatten(0, 1), grid_target.flatten()),
                  'loss_corruption': F.cross_entropy(corruption, kind)}
        optim_wrapper.update_params(sum(losses.values()))
        self.iteration += 1
        with torch.no_grad():
            losses['count_acc'] = (counts.argmax(-1) == count_target).float().mean()
            losses['grid_acc'] = (grid.argmax(-1) == grid_target).float().mean()
            losses['corruption_acc'] = (corruption.argmax(-1) == kind).float().mean()
        return {k: v.detach() for k, v in losses.items()}

    def export_weights(self, path: str) -> None:
        """The network's weights and config into folder ``path``."""
        from rtdmd.evaluation.shapes_fidelity import save_feature_net

        save_feature_net(self.net, path)

    def forward(self, inputs: Any = None, data_samples: Any = None, mode: str = 'tensor') -> Any:
        raise RuntimeError('ShapesFeatureTrainer is driven through train_step')
