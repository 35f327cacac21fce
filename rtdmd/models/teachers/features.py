"""Training the fidelity feature network of the shapes world (configs/evaluation/)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from torch import Tensor

from rtdmd.evaluation.shapes_fidelity import ShapesFeatureNet, feature_targets, save_feature_net
from rtdmd.registry import MODELS


@MODELS.register_module()
class ShapesFeatureTrainer(BaseModel):
    """Trains :class:`~rtdmd.evaluation.shapes_fidelity.ShapesFeatureNet` on renderings.

    ``loss_count``: cross-entropy of the objects per colour-shape pair (0-4, 15 heads);
    ``loss_grid``: cross-entropy of the dominant colour of each 4 x 4 grid cell. Targets are read
    off each rendering by the detector (exact on renderings). Diagnostics: ``count_acc``,
    ``grid_acc``.

    Args:
        width: the network's first-stage channels.
        feature_dim: the embedding size.
    """

    def __init__(self, width: int = 16, feature_dim: int = 64) -> None:
        super().__init__()
        self.net = ShapesFeatureNet(width, feature_dim)

    def train_step(self, data: dict, optim_wrapper: OptimWrapper) -> dict[str, Tensor]:
        images = data['image']
        images = torch.stack(list(images)) if isinstance(images, (list, tuple)) else images
        count_target, grid_target = feature_targets(images)
        counts, grid = self.net(images.to(next(self.net.parameters()).device))
        count_target, grid_target = count_target.to(counts.device), grid_target.to(grid.device)
        losses = {'loss_count': F.cross_entropy(counts.flatten(0, 1), count_target.flatten()),
                  'loss_grid': F.cross_entropy(grid.flatten(0, 1), grid_target.flatten())}
        optim_wrapper.update_params(losses['loss_count'] + losses['loss_grid'])
        with torch.no_grad():
            losses['count_acc'] = (counts.argmax(-1) == count_target).float().mean()
            losses['grid_acc'] = (grid.argmax(-1) == grid_target).float().mean()
        return {k: v.detach() for k, v in losses.items()}

    def export_weights(self, path: str) -> None:
        """The network's weights and config into folder ``path``."""
        save_feature_net(self.net, path)

    def forward(self, inputs: Any = None, data_samples: Any = None, mode: str = 'tensor') -> Any:
        raise RuntimeError('ShapesFeatureTrainer is driven through train_step')
