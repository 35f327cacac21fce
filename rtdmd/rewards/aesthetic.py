"""LAION aesthetic score: the improved-aesthetic-predictor MLP on CLIP ViT-L/14 image embeddings.

The release scores uint8 images run through ``CLIPProcessor`` (PIL), embeds them with CLIP
ViT-L/14 (``encode_image``: the projected 768-d embedding), L2-normalises the embedding and maps
it with a 5-layer MLP trained on SAC + LOGOS + AVA ratings (``sac+logos+ava1-l14-linearMSE.pth``).
Not differentiable in the release (the images are quantised to uint8 for PIL), so not here.

Weights (under :func:`rtdmd.rewards.weights.reward_weights_root`): the transformers snapshot of
``openai/clip-vit-large-patch14`` in ``<root>/clip-vit-large-patch14`` (shared with
:class:`~rtdmd.rewards.clip_score.CLIPScore`) and the MLP state dict at
``<root>/sac+logos+ava1-l14-linearMSE.pth``.
"""

from __future__ import annotations

import os.path as osp
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rtdmd.registry import REWARDS

from .base import RewardScorer
from .weights import (
    MissingRewardWeightsError,
    WeightFiles,
    require_weights,
    resolve_weights_path,
)

CLIP_PATH = 'clip-vit-large-patch14'
CLIP_SOURCE = 'openai/clip-vit-large-patch14'
CLIP_MODEL_FILES = ('config.json', 'model.safetensors|pytorch_model.bin')
MLP_FILE = 'sac+logos+ava1-l14-linearMSE.pth'
MLP_SOURCE = ('https://github.com/christophschuhmann/improved-aesthetic-predictor '
              '(raw file sac+logos+ava1-l14-linearMSE.pth)')


class AestheticMLP(nn.Module):
    """The improved-aesthetic-predictor head: ``dim -> 1024 -> 128 -> 64 -> 16 -> 1``.

    Layer indices (``layers.0, 2, 4, 6, 7``) match the released state dict; the dropouts sit
    at 1, 3, 5 and are inactive in eval mode.
    """

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


@REWARDS.register_module()
class AestheticScore(RewardScorer):
    """LAION aesthetic score (1-10 scale) of images ``(B, 3, H, W)`` in [0, 1]; prompts unused.

    Args:
        clip_path: the CLIP ViT-L/14 folder; relative paths are taken under ``root``.
        mlp_path: the MLP state dict; relative paths are taken under ``root``.
        root: reward-weights root (see :func:`reward_weights_root`).
        name: key under which the reward is logged.
    """

    differentiable = False
    output_scale = 'aesthetic ~5-6 (1-10 scale)'

    def __init__(self, clip_path: str = CLIP_PATH, mlp_path: str = MLP_FILE,
                 root: str | None = None, name: str | None = None) -> None:
        super().__init__(name)
        require_weights(self.required_weights(clip_path=clip_path, mlp_path=mlp_path, root=root),
                        type(self).__name__)
        clip_path = resolve_weights_path(clip_path, root)
        mlp_path = resolve_weights_path(mlp_path, root)
        from transformers import CLIPImageProcessor, CLIPModel

        self.clip_path, self.mlp_path = clip_path, mlp_path
        # The whole CLIPModel: its config keeps projection_dim at the top level, which
        # CLIPVisionModelWithProjection would not read from a CLIPModel snapshot.
        self.clip = CLIPModel.from_pretrained(clip_path).eval()
        self.processor = (CLIPImageProcessor.from_pretrained(clip_path)
                          if osp.isfile(osp.join(clip_path, 'preprocessor_config.json'))
                          else CLIPImageProcessor())
        self.mlp = AestheticMLP(self.clip.config.projection_dim).eval()
        state = torch.load(mlp_path, map_location='cpu', weights_only=True)
        try:
            self.mlp.load_state_dict(state)
        except RuntimeError as e:
            raise MissingRewardWeightsError(
                f'{mlp_path!r} is not the improved-aesthetic-predictor MLP for a '
                f'{self.clip.config.projection_dim}-d CLIP embedding ({MLP_SOURCE}): {e}'
            ) from e
        self.requires_grad_(False)

    @classmethod
    def required_weights(cls, clip_path: str = CLIP_PATH, mlp_path: str = MLP_FILE,
                         root: str | None = None, **init_args: Any) -> list[WeightFiles]:
        """The CLIP folder and the MLP file (relative paths under ``root``)."""
        return [WeightFiles(resolve_weights_path(clip_path, root), CLIP_MODEL_FILES, CLIP_SOURCE),
                WeightFiles.single(resolve_weights_path(mlp_path, root), MLP_SOURCE)]

    @torch.no_grad()
    def forward(self, samples: Tensor, prompts: Sequence[Any] | None = None,
                metadata: Sequence[dict] | None = None) -> Tensor:
        """Scores ``(B,)``; the images are quantised to uint8 and preprocessed with PIL."""
        from PIL import Image

        if samples.ndim != 4 or samples.shape[1] != 3:
            raise ValueError(f'expected images (B, 3, H, W), got shape {tuple(samples.shape)}')
        param = next(self.clip.parameters())
        uint8 = (samples.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        pil = [Image.fromarray(u) for u in uint8.permute(0, 2, 3, 1).cpu().numpy()]
        pixels = self.processor(images=pil, return_tensors='pt')['pixel_values']
        pixels = torch.as_tensor(pixels).to(param.device, param.dtype)
        embeds = self.clip.get_image_features(pixel_values=pixels).pooler_output
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        mlp_param = next(self.mlp.parameters())
        return self.mlp(embeds.to(mlp_param.dtype)).squeeze(-1).float()

    def extra_repr(self) -> str:
        return f'clip_path={self.clip_path!r}, mlp_path={self.mlp_path!r}'
