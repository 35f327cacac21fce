"""HPSv2: Human Preference Score v2.1 on open_clip ViT-H-14 (differentiable).

The release (``hpsv2.img_score``) builds open_clip ``ViT-H-14``, loads the fine-tuned checkpoint
``HPS_v2.1_compressed.pt`` (``checkpoint['state_dict']``), preprocesses PIL images with
``ResizeMaxSize(224)`` (longer side -> 224, bicubic, then centered zero padding to 224 x 224),
``ToTensor`` and the OpenAI CLIP mean / std, and scores ``image_features @ text_features.T`` with
both features L2-normalised and **no** logit scale. ``≈ 0.27-0.35`` on good images.

The checkpoint holds the whole CLIP model, so only ``<root>/HPS_v2.1_compressed.pt`` is needed
(from ``xswu/HPSv2`` on the Hugging Face Hub); the architecture comes from open_clip's built-in
``ViT-H-14`` config with ``pretrained=None``, and the tokenizer is open_clip's BPE tokenizer that
ships inside the package. ``root`` is resolved by :func:`rtdmd.rewards.weights.reward_weights_root`.

Here the preprocessing is the same recipe on float tensors in [0, 1] (bicubic antialiased resize,
clamp to [0, 1] as PIL's uint8 output does, zero pad, normalise), so gradients reach the images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rtdmd.registry import REWARDS

from .base import RewardScorer
from .preprocess import CLIP_MEAN, CLIP_STD
from .weights import WeightFiles, require_weights, resolve_weights_path

HPS_CHECKPOINT = 'HPS_v2.1_compressed.pt'
HPS_SOURCE = 'xswu/HPSv2'


def resize_max_size_pad(images: Tensor, size: int = 224) -> Tensor:
    """HPSv2's ``ResizeMaxSize``: longer side -> ``size`` (bicubic), centered zero padding.

    ``(B, C, H, W)`` floats in [0, 1] -> ``(B, C, size, size)``; the new sides are
    ``round(side * size / max(H, W))`` and the padding is ``[pad // 2, pad - pad // 2]`` on each
    axis (left/top first), filled with 0 before normalisation, as in the release.
    """
    h, w = images.shape[-2:]
    scale = size / float(max(h, w))
    if scale == 1.0:
        return images
    new_h, new_w = round(h * scale), round(w * scale)
    x = F.interpolate(images, size=(new_h, new_w), mode='bicubic', align_corners=False,
                      antialias=True).clamp(0, 1)
    pad_h, pad_w = size - new_h, size - new_w
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)


def hps_preprocess(images: Tensor, size: int = 224, mean: Sequence[float] = CLIP_MEAN,
                   std: Sequence[float] = CLIP_STD) -> Tensor:
    """``ResizeMaxSize(size)`` -> OpenAI CLIP normalisation, on float images in [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f'expected images (B, 3, H, W), got shape {tuple(images.shape)}')
    dtype = images.dtype
    x = images.float() if dtype in (torch.float16, torch.bfloat16) else images
    x = resize_max_size_pad(x, size)
    m = x.new_tensor(mean).view(1, -1, 1, 1)
    s = x.new_tensor(std).view(1, -1, 1, 1)
    return ((x - m) / s).to(dtype)


def load_hps_state_dict(path: str) -> dict[str, Tensor]:
    """The CLIP state dict of an HPS checkpoint (``{'state_dict': ...}`` or bare; ``module.``
    prefixes of DDP checkpoints stripped)."""
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    state_dict = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise ValueError(f'{path}: expected a state dict (or {{"state_dict": ...}}), got '
                         f'{type(checkpoint).__name__}')
    return {k.removeprefix('module.'): v for k, v in state_dict.items()}


@REWARDS.register_module()
class HPSv2(RewardScorer):
    """HPS v2.1: ``<img_feat, txt_feat>`` of the fine-tuned open_clip ViT-H-14, both normalised.

    Args:
        checkpoint: the checkpoint file; relative paths are taken under ``root``.
        root: reward-weights root (see :func:`reward_weights_root`).
        model_name: open_clip architecture (``'ViT-H-14'``; tests register a tiny one).
        name: key under which the reward is logged.
    """

    differentiable = True
    output_scale = 'normalised img.txt features (no logit scale) ~0.27-0.35'

    def __init__(self, checkpoint: str = HPS_CHECKPOINT, root: str | None = None,
                 model_name: str = 'ViT-H-14', name: str | None = None) -> None:
        super().__init__(name)
        require_weights(self.required_weights(checkpoint=checkpoint, root=root),
                        type(self).__name__)
        path = resolve_weights_path(checkpoint, root)
        import open_clip  # heavy import inside __init__

        self.path = path
        self.model = open_clip.create_model(model_name, pretrained=None)
        missing, unexpected = self.model.load_state_dict(load_hps_state_dict(path), strict=False)
        # Buffers open_clip may add or drop across versions (e.g. the text attention mask) are
        # harmless; any missing parameter is not.
        params = {n for n, _ in self.model.named_parameters()}
        missing_params = [k for k in missing if k in params]
        if missing_params or unexpected:
            raise ValueError(f'{path}: not an open_clip {model_name} checkpoint (missing '
                             f'{missing_params[:5]}, unexpected {list(unexpected)[:5]})')
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        size = self.model.visual.image_size
        self.image_size = size[0] if isinstance(size, tuple | list) else int(size)

    @classmethod
    def required_weights(cls, checkpoint: str = HPS_CHECKPOINT, root: str | None = None,
                         **init_args: Any) -> list[WeightFiles]:
        """The checkpoint file (a relative path under ``root``)."""
        return [WeightFiles.single(resolve_weights_path(checkpoint, root), HPS_SOURCE)]

    def train(self, mode: bool = True) -> HPSv2:
        """A frozen scorer: the CLIP model stays in eval mode."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, samples: Tensor, prompts: Sequence[Any] | Tensor | None = None,
                metadata: Sequence[dict] | None = None) -> Tensor:
        if prompts is None or isinstance(prompts, Tensor) or len(prompts) != samples.shape[0]:
            raise ValueError(f'HPSv2 needs one text prompt per image ({samples.shape[0]})')
        param = next(self.model.parameters())
        pixels = hps_preprocess(samples, self.image_size).to(param.dtype)
        tokens = self.tokenizer([str(p) for p in prompts]).to(param.device)
        img = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
        txt = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return (img * txt).sum(dim=-1)
