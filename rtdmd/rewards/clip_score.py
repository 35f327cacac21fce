"""CLIPScore: cosine similarity of CLIP ViT-L/14 image and text embeddings (differentiable).

The weights are the transformers snapshot of ``openai/clip-vit-large-patch14`` in
``<root>/clip-vit-large-patch14`` (``config.json``, ``model.safetensors`` or
``pytorch_model.bin``, tokenizer files; ``preprocessor_config.json`` if present gives the
input size and normalisation). ``root`` is resolved by
:func:`rtdmd.rewards.weights.reward_weights_root`.
"""

from __future__ import annotations

import json
import os.path as osp
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from rtdmd.registry import REWARDS

from .base import RewardScorer
from .preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess
from .weights import WeightFiles, require_weights, resolve_weights_path

#: What a transformers CLIP folder must hold (``a|b``: either file).
CLIP_FILES = ('config.json', 'model.safetensors|pytorch_model.bin',
              'tokenizer.json|vocab.json')


class CLIPPairScorer(RewardScorer):
    """Shared machinery of the CLIP-based prompt-image scorers (CLIPScore, PickScore).

    Loads ``CLIPModel`` and its tokenizer from a local folder, freezes them, preprocesses the
    images with :func:`clip_preprocess` (tensor ops, so gradients reach the images) and returns
    the per-sample cosine of the L2-normalised image and text embeddings; subclasses rescale it
    in :meth:`scale`.

    Args:
        path: the model folder; relative paths are taken under ``root``.
        root: reward-weights root (see :func:`reward_weights_root`).
        name: key under which the reward is logged.
    """

    differentiable = True
    default_path: str = ''
    source: str = ''
    output_scale: str = ''

    def __init__(self, path: str | None = None, root: str | None = None,
                 name: str | None = None) -> None:
        super().__init__(name)
        require_weights(self.required_weights(path=path, root=root), type(self).__name__)
        path = resolve_weights_path(path or self.default_path, root)
        from transformers import AutoTokenizer, CLIPModel

        self.path = path
        self.model = CLIPModel.from_pretrained(path).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.size, self.mean, self.std = self._image_config(path)

    @classmethod
    def required_weights(cls, path: str | None = None, root: str | None = None,
                         **init_args: Any) -> list[WeightFiles]:
        """The model folder (``path``, default :attr:`default_path`, under ``root``)."""
        return [WeightFiles(resolve_weights_path(path or cls.default_path, root), CLIP_FILES,
                            cls.source)]

    def _image_config(self, path: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
        """Input side and normalisation: ``preprocessor_config.json`` if there, else CLIP's."""
        size = self.model.config.vision_config.image_size
        mean, std = CLIP_MEAN, CLIP_STD
        cfg_file = osp.join(path, 'preprocessor_config.json')
        if osp.isfile(cfg_file):
            with open(cfg_file) as f:
                cfg = json.load(f)
            crop = cfg.get('crop_size', size)
            size = crop.get('height', size) if isinstance(crop, dict) else crop
            mean = tuple(cfg.get('image_mean', mean))
            std = tuple(cfg.get('image_std', std))
        return int(size), mean, std

    def cosine(self, samples: Tensor, prompts: Sequence[str]) -> Tensor:
        """Per-sample cosine of the image and prompt embeddings, ``(B,)``."""
        if samples.ndim != 4:
            raise ValueError(f'expected images (B, 3, H, W), got shape {tuple(samples.shape)}')
        if len(prompts) != samples.shape[0]:
            raise ValueError(f'{samples.shape[0]} images but {len(prompts)} prompts')
        param = next(self.model.parameters())
        pixels = clip_preprocess(samples, self.size, self.mean, self.std)
        # Pad to the full context (77) so a sample's score never depends on its batch.
        context = min(self.tokenizer.model_max_length,
                      self.model.config.text_config.max_position_embeddings)
        tokens = self.tokenizer(list(prompts), padding='max_length', truncation=True,
                                max_length=context, return_tensors='pt').to(param.device)
        image = self.model.get_image_features(
            pixel_values=pixels.to(param.device, param.dtype)).pooler_output
        text = self.model.get_text_features(
            input_ids=tokens['input_ids'], attention_mask=tokens['attention_mask']).pooler_output
        image = image / image.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        return (image * text).sum(dim=-1).float()

    def scale(self, cosine: Tensor) -> Tensor:
        return cosine

    def forward(self, samples: Tensor, prompts: Sequence[str],
                metadata: Sequence[dict] | None = None) -> Tensor:
        """Rewards ``(B,)`` of images ``(B, 3, H, W)`` in [0, 1] for their prompts."""
        return self.scale(self.cosine(samples, prompts))

    def extra_repr(self) -> str:
        return f'path={self.path!r}, size={self.size}'


@REWARDS.register_module()
class CLIPScore(CLIPPairScorer):
    """``cos(image, text)`` of CLIP ViT-L/14: ``logits_per_image / 100`` of the release.

    The release divides the diagonal of ``logits_per_image`` by 100, CLIP's (clamped) logit
    scale, which is the cosine itself; the cosine is computed directly, so the score does not
    depend on the checkpoint's ``logit_scale``.
    """

    default_path = 'clip-vit-large-patch14'
    source = 'openai/clip-vit-large-patch14'
    output_scale = 'cosine ~0.28-0.33'


__all__ = ['CLIPPairScorer', 'CLIPScore']
