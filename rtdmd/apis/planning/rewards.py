"""The training rewards' models at real size, for the memory planner.

A reward scorer's constructor needs its weights and its tokenizer, and GenEval's detector input
is prepared on the CPU from uint8 images; neither happens on FakeTensors. The planner therefore
builds each scorer's networks from the shipped architecture folders (``rtdmd/rewards/
architectures``; HPSv2's open_clip ViT-H-14 is open_clip's own config) in the dtype the scorer
loads them in, and runs the forwards the scorer runs on inputs of the scorer's shapes:

- ``CLIPScore`` (CLIP ViT-L/14) and ``PickScore`` (CLIP ViT-H/14): :func:`clip_preprocess` of
  the images, image and text (77 tokens) towers;
- ``HPSv2`` (open_clip ViT-H-14): :func:`hps_preprocess`, image and text towers;
- ``GenEvalReward``: Mask2Former Swin-S on the detector input (shorter side 800, longer
  <= 1333, padded to a multiple of 32), then CLIP ViT-L/14 on up to 16 object crops and on the
  colour prompts (the colour step runs per image and class; one call is its peak).

Each scorer holds its own copies (GenEval's CLIP is not CLIPScore's), in float32, as the scorers
load them. Scorers of other types are reported as not planned.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rtdmd.rewards.geneval_rules import COLOR_TEMPLATES, COLORS
from rtdmd.rewards.hps_v2 import hps_preprocess
from rtdmd.rewards.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess

from .meta import REWARD_ARCHITECTURES, architecture_dir

CONTEXT = 77  # CLIP / open_clip text tokens
MAX_CROPS = 16  # GenEval's per-class cap on detections


@dataclass
class RewardModel:
    """One training reward's networks and its scoring forward.

    Attributes:
        name: the reward's key in the config.
        scorer: the scorer's registered type.
        differentiable: whether reward back-propagation runs through it.
        modules: its networks (resident for the whole stage).
        score: ``score(images) -> (B,)`` on images ``(B, 3, H, W)`` in [0, 1].
    """

    name: str
    scorer: str
    differentiable: bool
    modules: list[nn.Module] = field(default_factory=list)
    score: Callable[[Tensor], Tensor] | None = None


def _transformers_model(cls: type, folder: str) -> nn.Module:
    """A transformers model of a shipped reward architecture, on the meta device."""
    config = cls.config_class.from_pretrained(str(architecture_dir(folder, REWARD_ARCHITECTURES)))
    with torch.device('meta'):
        return cls._from_config(config, dtype=getattr(config, 'dtype', None)
                                or torch.float32).eval().requires_grad_(False)


def _tokens(n: int, like: Tensor) -> Tensor:
    return torch.zeros(n, CONTEXT, dtype=torch.long, device=like.device)


def _features(out: object) -> Tensor:
    """transformers 5 returns an output object from ``get_*_features``: its pooled output."""
    return getattr(out, 'pooler_output', out)


def _clip_pair(name: str, scorer: str, folder: str) -> RewardModel:
    from transformers import CLIPModel

    model = _transformers_model(CLIPModel, folder)
    size = model.config.vision_config.image_size

    def score(images: Tensor) -> Tensor:
        pixels = clip_preprocess(images, size, CLIP_MEAN, CLIP_STD)
        image = _features(model.get_image_features(pixel_values=pixels))
        text = _features(model.get_text_features(input_ids=_tokens(images.shape[0], images)))
        return (nn.functional.normalize(image, dim=-1)
                * nn.functional.normalize(text, dim=-1)).sum(-1)

    return RewardModel(name, scorer, True, [model], score)


def _hps_v2(name: str) -> RewardModel:
    import open_clip

    with torch.device('meta'):
        model = open_clip.create_model('ViT-H-14', pretrained=None, device='meta')
    model.eval().requires_grad_(False)
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else int(size)

    def score(images: Tensor) -> Tensor:
        img = model.encode_image(hps_preprocess(images, size))
        txt = model.encode_text(_tokens(images.shape[0], images))
        return (nn.functional.normalize(img, dim=-1) * nn.functional.normalize(txt, dim=-1)).sum(-1)

    return RewardModel(name, 'HPSv2', True, [model], score)


def detector_input_side(height: int, width: int, shorter: int = 800, longer: int = 1333
                        ) -> tuple[int, int]:
    """Mask2Former's processor size: shorter side ``shorter``, longer <= ``longer``, padded to a
    multiple of 32."""
    scale = min(shorter / min(height, width), longer / max(height, width))
    h, w = round(height * scale), round(width * scale)
    return math.ceil(h / 32) * 32, math.ceil(w / 32) * 32


def _geneval(name: str) -> RewardModel:
    from transformers import CLIPModel, Mask2FormerForUniversalSegmentation

    detector = _transformers_model(Mask2FormerForUniversalSegmentation,
                                   'mask2former-swin-small-coco-instance')
    clip = _transformers_model(CLIPModel, 'clip-vit-large-patch14')
    size = clip.config.vision_config.image_size

    @torch.no_grad()
    def score(images: Tensor) -> Tensor:
        b, _, height, width = images.shape
        side = detector_input_side(height, width)
        out = detector(pixel_values=images.new_empty(b, 3, *side))
        crops = images.new_empty(MAX_CROPS, 3, size, size)
        feats = _features(clip.get_image_features(pixel_values=crops))
        prompts = _tokens(len(COLORS) * len(COLOR_TEMPLATES), images)
        colours = _features(clip.get_text_features(input_ids=prompts))
        del out, feats, colours
        return images.new_zeros(b)

    return RewardModel(name, 'GenEvalReward', False, [detector, clip], score)


#: Planner builders by scorer type.
REWARD_BUILDERS: dict[str, Callable[[str], RewardModel]] = {
    'CLIPScore': lambda name: _clip_pair(name, 'CLIPScore', 'clip-vit-large-patch14'),
    'PickScore': lambda name: _clip_pair(name, 'PickScore', 'PickScore_v1'),
    'HPSv2': _hps_v2,
    'GenEvalReward': _geneval,
}


def build_reward_models(rewards: dict) -> tuple[list[RewardModel], list[str]]:
    """Planner models of a distiller's ``rewards`` (``{name: dict(scorer=..., weight=...)}``).

    Returns:
        ``(models, not_planned)``: the models, and ``'name (Type)'`` for scorers without a
        planner architecture (their memory is not counted).
    """
    models, skipped = [], []
    for name, spec in (rewards or {}).items():
        scorer = spec['scorer']
        kind = scorer.get('type') if isinstance(scorer, dict) else type(scorer).__name__
        if kind in REWARD_BUILDERS:
            models.append(REWARD_BUILDERS[kind](name))
        else:
            skipped.append(f'{name} ({kind})')
    return models, skipped


__all__ = ['REWARD_BUILDERS', 'RewardModel', 'build_reward_models', 'detector_input_side']
