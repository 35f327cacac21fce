"""ImageReward v1.0: BLIP (ViT-L/16 + cross-attending BERT) + a linear MLP head, on transformers.

The release (``image-reward`` 1.5, ``ImageReward.ImageReward``; Xu et al., 2023) builds BLIP's
ViT-L/16 at 224 px (``create_vit('large', 224)``: width 1024, 24 layers, 16 heads, LayerNorm eps
1e-6) and a BERT-base text encoder whose layers cross-attend to all the image tokens
(``med_config.json``, ``encoder_width`` set to 1024), runs the tokenised prompt (bert-base-uncased,
``padding='max_length', truncation=True, max_length=35``) through the text encoder with the image
tokens as ``encoder_hidden_states`` and maps its ``[CLS]`` output with a 5-layer MLP (``768 ->
1024 -> 128 -> 64 -> 16 -> 1``, dropouts but *no* activations). The reward is
``(mlp(cls) - 0.16717) / 1.03334``: about 1.0-1.4 on good images, unbounded. Its images are PIL
images run through ``Resize(224, BICUBIC) -> CenterCrop(224) -> ToTensor -> Normalize(CLIP)``.

``image-reward`` does not import under transformers 5, so the scorer is built here on
transformers' ``BlipVisionModel`` and ``BlipTextModel`` (``is_decoder=True`` config, so every
layer has its cross-attention; run with ``is_decoder=False``, i.e. bidirectional self-attention,
as the release's ``mode='multimodal'`` encoder does). The release checkpoint's key names
(``blip.visual_encoder.*``, ``blip.text_encoder.*``, ``mlp.layers.*``) are converted at load time
by :func:`split_image_reward_state_dict`; the BLIP projections ``blip.vision_proj`` /
``blip.text_proj`` are unused by the reward and ignored, as the release ignores them.

Weights (under :func:`rtdmd.rewards.weights.reward_weights_root`): ``<root>/ImageReward/`` with
``ImageReward.pt`` and ``med_config.json`` (from ``THUDM/ImageReward``) and the tokenizer in
``<root>/bert-base-uncased/`` (``vocab.txt`` or ``tokenizer.json``, from ``bert-base-uncased``).

Here the images are preprocessed on float tensors in [0, 1] with
:func:`image_reward_preprocess` (the same recipe in tensor ops: the antialiased bicubic resize and
crop of :func:`rtdmd.rewards.preprocess.clip_preprocess`, clamped to [0, 1] like PIL's uint8
output), so gradients can reach them. The release does not back-propagate through ImageReward,
so ``differentiable`` defaults to False (the forward then runs without autograd); pass
``differentiable=True`` to use it for reward back-propagation.
"""

from __future__ import annotations

import json
import os.path as osp
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rtdmd.registry import REWARDS

from .aesthetic import AestheticMLP
from .base import RewardScorer
from .preprocess import center_crop, clip_preprocess, resize_shorter_side
from .weights import WeightFiles, require_weights, resolve_weights_path

IMAGE_REWARD_CHECKPOINT = 'ImageReward.pt'
MED_CONFIG = 'med_config.json'
IMAGE_REWARD_SOURCE = 'THUDM/ImageReward'
IMAGE_REWARD_PATH = 'ImageReward'
BERT_SOURCE = 'bert-base-uncased'
BERT_PATH = 'bert-base-uncased'
BERT_FILES = ('vocab.txt|tokenizer.json',)
#: The release's standardisation of the MLP output (``ImageReward.mean`` / ``.std``).
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
#: The release's prompt length: every prompt is padded (and truncated) to it.
MAX_PROMPT_TOKENS = 35

#: BLIP's ``create_vit('large', image_size=224)`` in ``BlipVisionConfig`` terms.
BLIP_VIT_LARGE: dict[str, Any] = dict(
    image_size=224, patch_size=16, hidden_size=1024, num_hidden_layers=24,
    num_attention_heads=16, intermediate_size=4096, hidden_act='gelu', layer_norm_eps=1e-6)

#: ``med_config.json`` fields read for the text encoder, with BERT-base defaults.
MED_DEFAULTS: dict[str, Any] = dict(
    vocab_size=30524, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act='gelu', layer_norm_eps=1e-12,
    max_position_embeddings=512, pad_token_id=0)

#: BLIP ViT (timm naming) -> ``BlipVisionModel`` key prefixes; ``{i}`` is a block index.
_VISION_NAMES: tuple[tuple[str, str], ...] = (
    ('cls_token', 'embeddings.class_embedding'),
    ('pos_embed', 'embeddings.position_embedding'),
    ('patch_embed.proj.', 'embeddings.patch_embedding.'),
    ('blocks.{i}.norm1.', 'encoder.layers.{i}.layer_norm1.'),
    ('blocks.{i}.norm2.', 'encoder.layers.{i}.layer_norm2.'),
    ('blocks.{i}.attn.qkv.', 'encoder.layers.{i}.self_attn.qkv.'),
    ('blocks.{i}.attn.proj.', 'encoder.layers.{i}.self_attn.projection.'),
    ('blocks.{i}.mlp.', 'encoder.layers.{i}.mlp.'),  # fc1 / fc2 keep their names
    ('norm.', 'post_layernorm.'),
)
#: Checkpoint prefix of each part -> name of the part.
_PARTS = {'blip.visual_encoder.': 'vision', 'blip.text_encoder.': 'text', 'mlp.': 'mlp'}
#: Checkpoint entries the reward does not use (BLIP's contrastive projections; the text
#: encoder's ``position_ids`` buffer, which transformers rebuilds).
_UNUSED = re.compile(r'^blip\.(vision_proj|text_proj)\.|^blip\.text_encoder\.embeddings\.'
                     r'position_ids$')


def _vision_key(key: str, to_release: bool = False) -> str:
    """Rename a vision key (after its part prefix) to transformers', or back to the release's."""
    for release, ours in _VISION_NAMES:
        src, dst = (ours, release) if to_release else (release, ours)
        pattern = '^' + re.escape(src).replace(re.escape('{i}'), r'(?P<i>\d+)')
        match = re.match(pattern, key)
        if match:
            index = match.groupdict().get('i') or ''
            return dst.replace('{i}', index) + key[match.end():]
    return key  # unknown: reported as unexpected by the caller


def split_image_reward_state_dict(
        state_dict: dict[str, Tensor]) -> tuple[dict[str, dict[str, Tensor]], dict[str, str]]:
    """Split the release's ``ImageReward.pt`` into transformers-named parts.

    Args:
        state_dict: the checkpoint's flat state dict (release key names).

    Returns:
        ``(parts, origin)``: ``parts['vision' | 'text' | 'mlp']`` are the state dicts of
        ``BlipVisionModel``, ``BlipTextModel`` and :class:`AestheticMLP` (key renames only,
        values untouched); ``origin['<part>.<new key>']`` is the checkpoint key it came from,
        for error messages. Unused entries (``blip.vision_proj``, ``blip.text_proj``,
        ``position_ids``) are dropped; keys outside the three parts are left out of ``parts``
        and listed under ``origin['ignored.<key>']``.
    """
    parts: dict[str, dict[str, Tensor]] = {name: {} for name in _PARTS.values()}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        if _UNUSED.match(key):
            continue
        prefix = next((p for p in _PARTS if key.startswith(p)), None)
        if prefix is None:
            origin[f'ignored.{key}'] = key
            continue
        part, new = _PARTS[prefix], key[len(prefix):]
        if part == 'vision':
            new = _vision_key(new)
        parts[part][new] = value
        origin[f'{part}.{new}'] = key
    return parts, origin


def _load_part(module: nn.Module, part: str, state_dict: dict[str, Tensor],
               origin: dict[str, str], path: str) -> None:
    """Strict load of one part, naming missing / unexpected / mis-shaped release keys."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f'{origin[f"{part}.{k}"]} {tuple(state_dict[k].shape)} vs '
              f'{tuple(expected[k].shape)}'
              for k in state_dict if k in expected and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        prefix = next(p for p, n in _PARTS.items() if n == part)
        release = [prefix + (_vision_key(k, to_release=True) if part == 'vision' else k)
                   for k in missing]
        shown = [f'missing {release[:8]}' if missing else '',
                 f'unexpected {[origin[f"{part}.{k}"] for k in unexpected][:8]}'
                 if unexpected else '',
                 f'wrong shape {shapes[:8]}' if shapes else '']
        raise ValueError(
            f'{path}: not an ImageReward checkpoint for this architecture ({part} part; '
            f'{"; ".join(s for s in shown if s)}). Expected the release file '
            f'{IMAGE_REWARD_CHECKPOINT} from {IMAGE_REWARD_SOURCE} with its {MED_CONFIG}.')
    module.load_state_dict(state_dict, strict=True)


def image_reward_preprocess(images: Tensor, size: int = 224) -> Tensor:
    """The release's ``Resize(size, BICUBIC) -> CenterCrop(size) -> ToTensor -> Normalize(CLIP)``.

    On float images ``(B, 3, H, W)`` in [0, 1], differentiably: :func:`clip_preprocess`'s
    antialiased bicubic resize and center crop, then a clamp to [0, 1] before normalising, as
    PIL's uint8 output is clipped (halves the largest differences to the PIL recipe at sharp
    edges). Returns ``(B, 3, size, size)`` in the dtype of ``images``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f'expected images (B, 3, H, W), got shape {tuple(images.shape)}')
    dtype = images.dtype
    x = images.float() if dtype in (torch.float16, torch.bfloat16) else images
    x = center_crop(resize_shorter_side(x, size), size).clamp(0, 1)
    return clip_preprocess(x, size).to(dtype)  # already size x size: only the normalisation


def read_med_config(path: str) -> dict[str, Any]:
    """The text-encoder fields of ``med_config.json`` (BERT-base defaults for absent ones).

    Raises:
        ValueError: if the config is not a cross-attending BERT with absolute positions.
    """
    with open(path) as f:
        med = json.load(f)
    if not med.get('add_cross_attention', False):
        raise ValueError(f'{path}: ImageReward needs a BERT with cross-attention '
                         f'("add_cross_attention": true)')
    if med.get('position_embedding_type', 'absolute') != 'absolute':
        raise ValueError(f'{path}: only absolute position embeddings are supported, got '
                         f'{med["position_embedding_type"]!r}')
    return {k: med.get(k, v) for k, v in MED_DEFAULTS.items()}


@REWARDS.register_module()
class ImageReward(RewardScorer):
    """ImageReward v1.0 of images ``(B, 3, H, W)`` in [0, 1] for their prompts, ``(B,)``.

    Args:
        path: the folder with ``ImageReward.pt`` and ``med_config.json``; relative paths are
            taken under ``root``.
        tokenizer_path: the bert-base-uncased tokenizer folder; relative to ``root`` likewise.
        root: reward-weights root (see :func:`reward_weights_root`).
        vision_config: overrides of :data:`BLIP_VIT_LARGE` (BLIP's ViT-L/16 at 224 px, which the
            release hard-codes); only its keys are accepted. Tests use it for a tiny ViT.
        differentiable: let gradients reach the images (False, as in the release: the forward
            then runs without autograd).
        name: key under which the reward is logged.
    """

    output_scale = '(mlp(cls) - 0.167) / 1.033, ~1.0-1.4 on good images (unbounded)'

    @classmethod
    def is_differentiable(cls, differentiable: bool = False, **init_args: Any) -> bool:
        return bool(differentiable)

    def __init__(self, path: str = IMAGE_REWARD_PATH, tokenizer_path: str = BERT_PATH,
                 root: str | None = None, vision_config: dict[str, Any] | None = None,
                 differentiable: bool = False, name: str | None = None) -> None:
        super().__init__(name)
        require_weights(self.required_weights(path=path, tokenizer_path=tokenizer_path,
                                              root=root), type(self).__name__)
        path = resolve_weights_path(path, root)
        tokenizer_path = resolve_weights_path(tokenizer_path, root)
        unknown = sorted(set(vision_config or {}) - set(BLIP_VIT_LARGE))
        if unknown:
            raise ValueError(f'unknown vision_config keys {unknown}; expected a subset of '
                             f'{sorted(BLIP_VIT_LARGE)}')
        from transformers import (
            BertTokenizer,
            BlipTextConfig,
            BlipTextModel,
            BlipVisionConfig,
            BlipVisionModel,
        )

        self.path, self.tokenizer_path = path, tokenizer_path
        self.differentiable = bool(differentiable)
        vision_cfg = BlipVisionConfig(**{**BLIP_VIT_LARGE, **(vision_config or {})})
        text_cfg = BlipTextConfig(
            **read_med_config(osp.join(path, MED_CONFIG)),
            encoder_hidden_size=vision_cfg.hidden_size,  # the release's encoder_width
            is_decoder=True,  # builds the cross-attention of every layer
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            bos_token_id=None, eos_token_id=None, sep_token_id=None)  # unused by an encoder
        self.vision = BlipVisionModel(vision_cfg)
        self.text = BlipTextModel(text_cfg, add_pooling_layer=False)
        self.mlp = AestheticMLP(text_cfg.hidden_size)  # the same head: linear layers, no ReLU
        self._load(osp.join(path, IMAGE_REWARD_CHECKPOINT))
        self.eval().requires_grad_(False)
        # The release's BLIP tokenizer: bert-base-uncased plus [DEC] (bos) and [ENC].
        self.tokenizer = BertTokenizer.from_pretrained(tokenizer_path)
        self.tokenizer.add_special_tokens({'bos_token': '[DEC]'})
        self.tokenizer.add_special_tokens({'additional_special_tokens': ['[ENC]']})
        if len(self.tokenizer) > text_cfg.vocab_size:
            raise ValueError(f'{tokenizer_path}: the tokenizer has {len(self.tokenizer)} tokens, '
                             f'more than the text encoder\'s vocab_size {text_cfg.vocab_size}')
        self.image_size = int(vision_cfg.image_size)

    @classmethod
    def required_weights(cls, path: str = IMAGE_REWARD_PATH, tokenizer_path: str = BERT_PATH,
                         root: str | None = None, **init_args: Any) -> list[WeightFiles]:
        """The ImageReward folder and the tokenizer folder (relative paths under ``root``)."""
        return [WeightFiles(resolve_weights_path(path, root), (IMAGE_REWARD_CHECKPOINT, MED_CONFIG),
                            IMAGE_REWARD_SOURCE),
                WeightFiles(resolve_weights_path(tokenizer_path, root), BERT_FILES, BERT_SOURCE)]

    def _load(self, checkpoint: str) -> None:
        state = torch.load(checkpoint, map_location='cpu', weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ValueError(f'{checkpoint}: expected a flat state dict of tensors (the release '
                             f'{IMAGE_REWARD_CHECKPOINT}), got {type(state).__name__}')
        parts, origin = split_image_reward_state_dict(state)
        self.ignored_keys = sorted(v for k, v in origin.items() if k.startswith('ignored.'))
        for part, module in (('vision', self.vision), ('text', self.text), ('mlp', self.mlp)):
            _load_part(module, part, parts[part], origin, checkpoint)

    def train(self, mode: bool = True) -> ImageReward:
        """A frozen scorer: the networks stay in eval mode (no dropout)."""
        super().train(mode)
        for module in (self.vision, self.text, self.mlp):
            module.eval()
        return self

    def cls_features(self, samples: Tensor, prompts: Sequence[str]) -> Tensor:
        """The text encoder's ``[CLS]`` output after cross-attending to the image, ``(B, D)``."""
        param = next(self.vision.parameters())
        pixels = image_reward_preprocess(samples, self.image_size).to(param.device, param.dtype)
        # Always padded to 35 tokens (the release's setting), so scores are batch-independent.
        tokens = self.tokenizer([str(p) for p in prompts], padding='max_length', truncation=True,
                                max_length=MAX_PROMPT_TOKENS, return_tensors='pt')
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=param.device)
        out = self.text(input_ids=tokens['input_ids'].to(param.device),
                        attention_mask=tokens['attention_mask'].to(param.device),
                        encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts)
        return out.last_hidden_state[:, 0]

    def forward(self, samples: Tensor, prompts: Sequence[Any] | Tensor | None = None,
                metadata: Sequence[dict] | None = None) -> Tensor:
        """Rewards ``(B,)`` of images ``(B, 3, H, W)`` in [0, 1] for their prompts.

        float32 (float64 for a float64 scorer); standardised, ~1.0-1.4 on good images.
        """
        if samples.ndim != 4 or samples.shape[1] != 3:
            raise ValueError(f'expected images (B, 3, H, W), got shape {tuple(samples.shape)}')
        if prompts is None or isinstance(prompts, Tensor) or len(prompts) != samples.shape[0]:
            raise ValueError(f'ImageReward needs one text prompt per image ({samples.shape[0]})')
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
            cls = self.cls_features(samples, prompts)
            mlp_param = next(self.mlp.parameters())
            raw = self.mlp(cls.to(mlp_param.dtype)).squeeze(-1)
            raw = raw.float() if raw.dtype != torch.float64 else raw  # float64 kept for checks
            return (raw - REWARD_MEAN) / REWARD_STD

    def extra_repr(self) -> str:
        return (f'path={self.path!r}, tokenizer_path={self.tokenizer_path!r}, '
                f'differentiable={self.differentiable}')


__all__ = ['ImageReward', 'image_reward_preprocess', 'split_image_reward_state_dict']
