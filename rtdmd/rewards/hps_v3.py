"""HPSv3: the Qwen2-VL-7B reward model of Ma et al. (2025), rebuilt on transformers' own classes.

The release (``hpsv3`` 1.0.0, ``HPSv3RewardInferencer`` on transformers 4.45.2) is
``Qwen2VLForConditionalGeneration`` plus a ``rm_head`` MLP (``ranknet``: hidden -> 1024 -> ReLU ->
Dropout -> 16 -> ReLU -> 2, kept in float32), a special token ``<|Reward|>`` added to the Qwen2-VL
tokenizer (embeddings resized to ``len(tokenizer)``) and a one-turn chat: the image, then the
rating instruction with the prompt and ``<|Reward|>``. The head reads the final hidden state at
``<|Reward|>``; its two outputs are ``(mu, log sigma)`` and the reward is ``mu`` (≈10-16 on good
images). The backbone runs in bfloat16 (the release casts the whole model, buffers included).

Rebuilt here on ``Qwen2VLModel`` (transformers 5) with the same computation:

- images: float [0, 1] -> uint8 (``round(255 x)``, as :class:`AestheticScore`) -> PIL -> the
  release's ``fetch_image``: ``smart_resize`` to multiples of 28 with ``min_pixels = max_pixels =
  256 * 28 * 28`` (≈448 x 448, 256 visual tokens) and a PIL bicubic resize -> the Qwen2-VL image
  processor (rescale 1/255, CLIP mean / std, 14 px patches, 2 x 2 merge). Not differentiable.
- text: the release's instruction and chat template, rendered by the processor of the base model.
- positions: the release's forward passes ``position_ids=None`` to the decoder, whose default is
  sequential positions shared by the three M-RoPE sections (not Qwen2-VL's 3-D image positions);
  transformers 5 would compute 3-D positions, so sequential ones are passed explicitly.
- vision RoPE: transformers 4.45.2 builds the vision rotary angles in the dtype of ``inv_freq``
  (bfloat16 once the model is cast), transformers 5 in float32; the 4.45.2 rounding is restored.
- weights: the checkpoint keys of the 4.45.2 layout (``visual.*``, ``model.*`` for the decoder,
  ``lm_head.weight``, ``rm_head.*``) are renamed explicitly (:data:`HPSV3_KEY_MAP`); ``lm_head`` is
  not needed for the reward and is dropped.

Files (``root`` from :func:`rtdmd.rewards.weights.reward_weights_root`):
``<root>/HPSv3/HPSv3.safetensors`` (``MizzenAI/HPSv3``) and the base config / tokenizer /
processor ``<root>/Qwen2-VL-7B-Instruct`` (``Qwen/Qwen2-VL-7B-Instruct``; the base weights are
not read, the HPSv3 checkpoint holds the whole model).
"""

from __future__ import annotations

import math
import os.path as osp
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rtdmd.registry import REWARDS

from .base import MAIN_SCORE, RewardScorer
from .weights import WeightFiles, require_weights, resolve_weights_path

HPSV3_CHECKPOINT = osp.join('HPSv3', 'HPSv3.safetensors')
HPSV3_SOURCE = 'MizzenAI/HPSv3'
HPSV3_BASE = 'Qwen2-VL-7B-Instruct'
HPSV3_BASE_SOURCE = 'Qwen/Qwen2-VL-7B-Instruct'
HPSV3_BASE_FILES = ('config.json', 'preprocessor_config.json', 'tokenizer_config.json',
                    'tokenizer.json|vocab.json')
#: The special token whose final hidden state feeds the reward head.
REWARD_TOKEN = '<|Reward|>'
#: ``min_pixels = max_pixels`` of the release's ``prepare_batch`` (256 tokens of 28 x 28 pixels).
IMAGE_PIXELS = 256 * 28 * 28
#: Side multiple of ``smart_resize``: 14 px patches merged 2 x 2.
IMAGE_FACTOR = 28
MAX_ASPECT_RATIO = 200
#: Checkpoint key prefix (transformers 4.45.2 layout) -> prefix in this scorer; ``None`` drops it.
HPSV3_KEY_MAP: tuple[tuple[str, str | None], ...] = (
    ('visual.', 'model.visual.'),
    ('model.', 'model.language_model.'),
    ('lm_head.', None),
    ('rm_head.', 'rm_head.'),
)

# Verbatim from hpsv3/dataset/data_collator_qwen.py (trailing spaces included).
INSTRUCTION = (
    '\n'
    'You are tasked with evaluating a generated image based on Visual Quality and '
    'Text Alignment and give a overall score to estimate the human preference. '
    'Please provide a rating from 0 to 10, with 0 being the worst and 10 being the best. \n'
    '\n'
    '**Visual Quality:**  \n'
    'Evaluate the overall visual quality of the image. The following sub-dimensions '
    'should be considered:\n'
    '- **Reasonableness:** The image should not contain any significant biological '
    'or logical errors, such as abnormal body structures or nonsensical '
    'environmental setups.\n'
    '- **Clarity:** Evaluate the sharpness and visibility of the image. The image '
    'should be clear and easy to interpret, with no blurring or indistinct areas.\n'
    '- **Detail Richness:** Consider the level of detail in textures, materials, '
    'lighting, and other visual elements (e.g., hair, clothing, shadows).\n'
    '- **Aesthetic and Creativity:** Assess the artistic aspects of the image, '
    'including the color scheme, composition, atmosphere, depth of field, and the '
    'overall creative appeal. The scene should convey a sense of harmony and balance.\n'
    '- **Safety:** The image should not contain harmful or inappropriate content, '
    'such as political, violent, or adult material. If such content is present, the '
    'image quality and satisfaction score should be the lowest possible. \n'
    '\n'
    '**Text Alignment:**  \n'
    'Assess how well the image matches the textual prompt across the following '
    'sub-dimensions:\n'
    '- **Subject Relevance** Evaluate how accurately the subject(s) in the image '
    '(e.g., person, animal, object) align with the textual description. The subject '
    'should match the description in terms of number, appearance, and behavior.\n'
    '- **Style Relevance:** If the prompt specifies a particular artistic or '
    'stylistic style, evaluate how well the image adheres to this style.\n'
    '- **Contextual Consistency**: Assess whether the background, setting, and '
    'surrounding elements in the image logically fit the scenario described in the '
    'prompt. The environment should support and enhance the subject without '
    'contradictions.\n'
    '- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt '
    '(e.g., colors, clothing, accessories, expressions, actions) are faithfully '
    'represented in the image. Minor deviations may be acceptable, but critical '
    'attributes should be preserved.\n'
    '- **Semantic Coherence**: Evaluate whether the overall meaning and intent of '
    'the prompt are captured in the image. The generated content should not '
    'introduce elements that conflict with or distort the original description.\n'
    'Textual prompt - {text_prompt}\n'
    '\n'
    '\n'
)
PROMPT_WITH_SPECIAL_TOKEN = (
    '\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n')


def hpsv3_user_text(prompt: str) -> str:
    """The release's user text: the instruction with the prompt, then the ``<|Reward|>`` line."""
    return INSTRUCTION.format(text_prompt=prompt) + PROMPT_WITH_SPECIAL_TOKEN


def hpsv3_messages(prompts: Sequence[str], min_pixels: int = IMAGE_PIXELS,
                   max_pixels: int = IMAGE_PIXELS) -> list[list[dict[str, Any]]]:
    """One single-turn conversation per prompt, as ``prepare_batch`` of the release builds it
    (the image entry before the text; the PIL image itself is passed to the processor apart)."""
    return [[{'role': 'user', 'content': [
        {'type': 'image', 'min_pixels': min_pixels, 'max_pixels': max_pixels},
        {'type': 'text', 'text': hpsv3_user_text(prompt)}]}] for prompt in prompts]


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR,
                 min_pixels: int = IMAGE_PIXELS, max_pixels: int = IMAGE_PIXELS) -> tuple[int, int]:
    """The release's ``smart_resize`` (``hpsv3/dataset/utils.py``): sides -> multiples of
    ``factor``, area into ``[min_pixels, max_pixels]``, aspect ratio kept as well as possible.

    Returns ``(new_height, new_width)``; e.g. 512 x 512 and 1024 x 1024 -> 448 x 448, 720 x 1280 ->
    336 x 588 with the release's ``min_pixels = max_pixels = 256 * 28 * 28``.
    """
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f'absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got '
                         f'{max(height, width) / min(height, width)}')
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_pil_images(samples: Tensor, min_pixels: int = IMAGE_PIXELS,
                  max_pixels: int = IMAGE_PIXELS) -> list[Any]:
    """``(B, 3, H, W)`` floats in [0, 1] -> PIL RGB images as the release's ``fetch_image`` feeds
    the processor: quantised to uint8 (``round(255 x)``), then resized to :func:`smart_resize`'s
    size with PIL's bicubic filter."""
    from PIL import Image

    if samples.ndim != 4 or samples.shape[1] != 3:
        raise ValueError(f'expected images (B, 3, H, W) in [0, 1], got shape '
                         f'{tuple(samples.shape)}')
    uint8 = (samples.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    height, width = samples.shape[-2:]
    new_h, new_w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
    return [Image.fromarray(a).resize((new_w, new_h), Image.BICUBIC)
            for a in uint8.permute(0, 2, 3, 1).cpu().numpy()]


def reward_head(hidden_size: int, output_dim: int = 2) -> nn.Sequential:
    """The release's ``ranknet`` head without ``rm_head_kwargs``: ``(..., hidden) -> (..., 2)``.

    Layer indices (0, 3, 5) are those of the checkpoint's ``rm_head.*`` keys.
    """
    return nn.Sequential(nn.Linear(hidden_size, 1024), nn.ReLU(), nn.Dropout(0.05),
                         nn.Linear(1024, 16), nn.ReLU(), nn.Linear(16, output_dim))


def convert_hpsv3_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Checkpoint keys (transformers 4.45.2 ``Qwen2VLRewardModelBT``) -> this scorer's keys.

    ``visual.*`` -> ``model.visual.*``, ``model.*`` (the decoder) -> ``model.language_model.*``,
    ``rm_head.*`` unchanged, ``lm_head.weight`` dropped (:data:`HPSV3_KEY_MAP`).

    Raises:
        ValueError: on a key that none of the prefixes covers.
    """
    converted, unknown = {}, []
    for key, value in state_dict.items():
        rule = next(((old, new) for old, new in HPSV3_KEY_MAP if key.startswith(old)), None)
        if rule is None:
            unknown.append(key)
        elif rule[1] is not None:
            converted[rule[1] + key[len(rule[0]):]] = value
    if unknown:
        raise ValueError(f'unexpected keys in the HPSv3 checkpoint: {unknown[:5]}')
    return converted


def _release_vision_rope_forward(self: nn.Module, x: Tensor,
                                 position_ids: Tensor) -> tuple[Tensor, Tensor]:
    """transformers 4.45.2's vision RoPE: angles and their cos / sin in ``inv_freq``'s dtype.

    Bound to ``Qwen2VLVisionRotaryEmbedding`` instances in place of transformers 5's float32
    forward (identical in float32; in bfloat16 it rounds the angles as the release does).
    """
    freqs = position_ids[..., None].to(self.inv_freq.dtype) * self.inv_freq.to(x.device)
    cos = freqs.cos().float() * self.attention_scaling
    sin = freqs.sin().float() * self.attention_scaling
    return self.recomposition_frequencies(cos), self.recomposition_frequencies(sin)


@REWARDS.register_module()
class HPSv3(RewardScorer):
    """HPSv3: ``mu`` of the reward head at ``<|Reward|>`` of a Qwen2-VL-7B (B,) reward.

    Args:
        checkpoint: the ``HPSv3.safetensors`` file; relative paths are taken under ``root``.
        base: the ``Qwen2-VL-7B-Instruct`` folder (config, tokenizer, processor, chat template);
            relative paths are taken under ``root``.
        root: reward-weights root (see :func:`reward_weights_root`).
        dtype: dtype of the Qwen2-VL backbone (the release runs bfloat16); the head is float32.
        attn_implementation: transformers attention backend (``'sdpa'``, ``'flash_attention_2'``,
            ``'eager'``).
        pixels: ``min_pixels = max_pixels`` of the image resize (the release's 256 * 28 * 28).
        name: key under which the reward is logged.
    """

    differentiable = False
    output_scale = 'mu of the (mu, log sigma) head at <|Reward|> ~10-16 on good images'

    def __init__(self, checkpoint: str = HPSV3_CHECKPOINT, base: str = HPSV3_BASE,
                 root: str | None = None, dtype: str = 'bfloat16',
                 attn_implementation: str = 'sdpa', pixels: int = IMAGE_PIXELS,
                 name: str | None = None) -> None:
        super().__init__(name)
        require_weights(self.required_weights(checkpoint=checkpoint, base=base, root=root),
                        type(self).__name__)
        path = resolve_weights_path(checkpoint, root)
        base_path = resolve_weights_path(base, root)
        from accelerate import init_empty_weights
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoProcessor, Qwen2VLModel

        self.path, self.pixels = path, pixels
        # The release: processor with right padding, <|Reward|> added as a special token and the
        # embeddings resized to the new tokenizer length.
        self.processor = AutoProcessor.from_pretrained(base_path, padding_side='right')
        tokenizer = self.processor.tokenizer
        tokenizer.add_special_tokens({'additional_special_tokens': [REWARD_TOKEN]})
        self.reward_token_id = int(tokenizer.convert_tokens_to_ids(REWARD_TOKEN))
        config = AutoConfig.from_pretrained(base_path)
        config.text_config.vocab_size = len(tokenizer)
        torch_dtype = getattr(torch, dtype)
        with init_empty_weights():  # parameters on meta; the checkpoint holds them all
            self.model = Qwen2VLModel._from_config(config, attn_implementation=attn_implementation)
        self.rm_head = reward_head(config.text_config.hidden_size)
        state = convert_hpsv3_state_dict(load_file(path))
        state = {k: v.to(torch.float32 if k.startswith('rm_head.') else torch_dtype)
                 for k, v in state.items()}
        try:
            self.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise ValueError(f'{path}: not an HPSv3 checkpoint for the Qwen2-VL config of '
                             f'{base_path} (tokenizer length {len(tokenizer)} with '
                             f'{REWARD_TOKEN}): {err}') from err
        # The release casts the whole model (rotary inv_freq buffers included), then the head
        # back to float32.
        self.model.to(torch_dtype)
        rope = self.model.visual.rotary_pos_emb
        rope.forward = _release_vision_rope_forward.__get__(rope)
        self.image_token_id = int(config.image_token_id)
        self.eval().requires_grad_(False)

    @classmethod
    def required_weights(cls, checkpoint: str = HPSV3_CHECKPOINT, base: str = HPSV3_BASE,
                         root: str | None = None, **init_args: Any) -> list[WeightFiles]:
        """The checkpoint file and the base folder (relative paths under ``root``)."""
        return [WeightFiles.single(resolve_weights_path(checkpoint, root), HPSV3_SOURCE),
                WeightFiles(resolve_weights_path(base, root), HPSV3_BASE_FILES,
                            HPSV3_BASE_SOURCE)]

    def train(self, mode: bool = True) -> HPSv3:
        """A frozen scorer: stays in eval mode (no dropout in the head)."""
        return super().train(False)

    def prepare_inputs(self, samples: Tensor, prompts: Sequence[Any] | Tensor | None) -> Any:
        """The processor batch of the release (``input_ids``, ``attention_mask`` right-padded,
        ``pixel_values`` (sum of patches, 1176), ``image_grid_thw`` (B, 3)), on the CPU."""
        if prompts is None or isinstance(prompts, Tensor) or len(prompts) != samples.shape[0]:
            raise ValueError(f'HPSv3 needs one text prompt per image ({samples.shape[0]})')
        images = to_pil_images(samples, self.pixels, self.pixels)
        texts = self.processor.apply_chat_template(
            hpsv3_messages([str(p) for p in prompts], self.pixels, self.pixels), tokenize=False,
            add_generation_prompt=True)
        return self.processor(text=texts, images=images, padding=True, return_tensors='pt')

    @torch.no_grad()
    def reward_outputs(self, samples: Tensor, prompts: Sequence[Any] | Tensor | None) -> Tensor:
        """``(B, 2)`` float32 head outputs ``(mu, log sigma)`` at each ``<|Reward|>`` token."""
        batch = self.prepare_inputs(samples, prompts)
        device = self.rm_head[0].weight.device
        input_ids = batch['input_ids'].to(device)
        is_reward = input_ids == self.reward_token_id
        if not bool((is_reward.sum(dim=1) == 1).all()):
            raise ValueError(f'each HPSv3 input must hold exactly one {REWARD_TOKEN} token; remove '
                             f'it from the prompts (counts {is_reward.sum(dim=1).tolist()})')
        b, length = input_ids.shape
        # The release's decoder call has position_ids=None: sequential positions, the same for
        # the three M-RoPE sections.
        positions = torch.arange(length, device=device).view(1, 1, -1).expand(3, b, -1)
        hidden = self.model(
            input_ids=input_ids, attention_mask=batch['attention_mask'].to(device),
            position_ids=positions, pixel_values=batch['pixel_values'].to(device),
            image_grid_thw=batch['image_grid_thw'].to(device), use_cache=False).last_hidden_state
        return self.rm_head(hidden[is_reward].float())

    def forward(self, samples: Tensor, prompts: Sequence[Any] | Tensor | None = None,
                metadata: Sequence[dict] | None = None) -> Tensor:
        """``(B,)`` float32 ``mu`` for ``(B, 3, H, W)`` images in [0, 1] and B prompts."""
        return self.reward_outputs(samples, prompts)[:, 0]

    def score_details(self, samples: Tensor, prompts: Sequence[Any] | Tensor | None,
                      metadata: Sequence[dict] | None = None) -> dict[str, Tensor]:
        """``mu`` and ``sigma = exp(second head output)``, the release's uncertainty."""
        out = self.reward_outputs(samples, prompts)
        return {MAIN_SCORE: out[:, 0], 'sigma': out[:, 1].exp()}
