"""Stable Diffusion 3 / 3.5 (Medium): ``SD3Transformer2DModel`` behind the backbone protocol.

One class serves both releases (``model_type: sd35`` in the release); SD3.5 differs only by its
transformer config (``qk_norm``, dual-attention blocks), which ``from_pretrained`` reads.
Wiring (ALGORITHM.md 1, 6.1; pitfalls 2, 22, 23):

- text: CLIP-L and CLIP-G (``CLIPTextModelWithProjection``, ``hidden_states[-2]``, 77 tokens)
  concatenated on features and zero-padded to the T5 width, then concatenated on the sequence
  with T5 (``max_sequence_length`` 128, not the pipeline's default 256); pooled = the two CLIP
  projections concatenated. This is ``StableDiffusion3Pipeline.encode_prompt``, which we call on a
  pipeline object built from the text components only, so the conditioning is the pipeline's own;
- the transformer takes the model timestep ``1000 sigma`` (diffusers does not rescale it for SD3);
- few-step sigmas use the static shift of the scheduler config (3.0 in both releases), so
  ``[1000, 750, 500, 250]`` gives ``[1.0, 0.9, 0.75, 0.5, 0]``;
- latents are ``(16, R/8, R/8)``; decoding is ``x / scaling_factor + shift_factor`` through the
  VAE, then ``(img / 2 + 0.5).clamp(0, 1)``;
- teacher guidance is real CFG against the empty prompt (``Backbone.predict_velocity``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from diffusers.models.attention import JointTransformerBlock
from torch import Tensor, nn
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from rtdmd.functional.timesteps import sigma_to_timestep, step_list_to_sigmas
from rtdmd.registry import MODELS

from .base import Condition
from .diffusers_base import DiffusersBackbone
from .vae import decode_scaled, encode_scaled

_WEIGHTS = ['config.json', '*weights']


@MODELS.register_module()
class SD3Backbone(DiffusersBackbone):
    """SD3-Medium / SD3.5-Medium backbone (see module docstring).

    Args:
        pretrained: the diffusers snapshot of ``stabilityai/stable-diffusion-3-medium-diffusers``
            or ``stabilityai/stable-diffusion-3.5-medium`` (teacher, fake score, generator, text
            encoders, VAE), relative to ``weights_root``.
        generator_init: optional other snapshot for the generator's transformer.
        weights_root: root of relative paths (default ``$RTDMD_WEIGHTS`` or ``weights``).
        lora: LoRA settings (rank 32, alpha 64, gaussian init; targets default to
            :attr:`lora_targets`).
        dtype: weight dtype of transformers, text encoders and VAE.
        gradient_checkpointing: checkpoint the transformers' blocks.
        resolution: image side in pixels (SD3-M trains at 1024, SD3.5-M at 512).
        max_sequence_length: T5 tokens (the release uses 128).
        repo_id: the Hub repository the snapshot comes from (named by the missing-weights
            error); ``None`` is SD3-Medium's.
        vae_gradient_checkpointing, lora_compute: see :class:`DiffusersBackbone`.
    """

    transformer_class: ClassVar[type] = SD3Transformer2DModel
    shard_block_classes: ClassVar[tuple[type, ...]] = (JointTransformerBlock,)
    # Joint attention of every JointTransformerBlock. The ``attn.`` prefix keeps SD3.5's second
    # (image-only) attention ``attn2`` out, and the last block has no ``to_add_out``
    # (context_pre_only), so peft matches exactly the release's modules.
    lora_targets: ClassVar[tuple[str, ...]] = (
        'attn.to_q', 'attn.to_k', 'attn.to_v', 'attn.to_out.0',
        'attn.add_q_proj', 'attn.add_k_proj', 'attn.add_v_proj', 'attn.to_add_out')
    default_repo_id: ClassVar[str] = 'stabilityai/stable-diffusion-3-medium-diffusers'
    components: ClassVar[dict[str, list[str]]] = {
        '': ['model_index.json'],
        'transformer': _WEIGHTS,
        'vae': _WEIGHTS,
        'text_encoder': _WEIGHTS,
        'text_encoder_2': _WEIGHTS,
        'text_encoder_3': _WEIGHTS,
        'tokenizer': ['tokenizer_config.json'],
        'tokenizer_2': ['tokenizer_config.json'],
        'tokenizer_3': ['tokenizer_config.json'],
        'scheduler': ['scheduler_config.json'],
    }
    pipeline_class: ClassVar[type] = StableDiffusion3Pipeline
    pipeline_component_names: ClassVar[tuple[str, ...]] = (
        'scheduler', 'vae', 'text_encoder', 'tokenizer', 'text_encoder_2', 'tokenizer_2',
        'text_encoder_3', 'tokenizer_3')

    def __init__(self, pretrained: str, generator_init: str | None = None,
                 weights_root: str | None = None, lora: dict | None = None,
                 dtype: str = 'bfloat16', gradient_checkpointing: bool = True,
                 resolution: int = 1024, max_sequence_length: int = 128,
                 repo_id: str | None = None, vae_gradient_checkpointing: bool = True,
                 lora_compute: str = 'autocast') -> None:
        if not 0 < max_sequence_length <= 512:
            raise ValueError(f'max_sequence_length must lie in [1, 512], got '
                             f'{max_sequence_length}')
        super().__init__(pretrained, generator_init=generator_init, weights_root=weights_root,
                         lora=lora, dtype=dtype, gradient_checkpointing=gradient_checkpointing,
                         resolution=resolution, repo_id=repo_id,
                         vae_gradient_checkpointing=vae_gradient_checkpointing,
                         lora_compute=lora_compute)
        self.max_sequence_length = max_sequence_length
        multiple = self.vae_scale_factor * self.fake_score.config.patch_size
        if resolution % multiple:
            raise ValueError(f'resolution must be a multiple of {multiple} (VAE factor x patch '
                             f'size), got {resolution}')

    # --------------------------------------------------------------------------------- loading
    def load_components(self, path: str) -> None:
        """Frozen text encoders, tokenizers, VAE and the scheduler config (for the shift)."""
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path,
                                                                         subfolder='scheduler')
        if self.scheduler.config.get('use_dynamic_shifting', False):
            raise ValueError(f'{path}/scheduler: SD3 uses a static shift, but the scheduler '
                             f'config asks for dynamic shifting')
        self.shift = float(self.scheduler.config.shift)
        self.vae = AutoencoderKL.from_pretrained(path, subfolder='vae', dtype=self.dtype)
        self.text_encoder = CLIPTextModelWithProjection.from_pretrained(
            path, subfolder='text_encoder', dtype=self.dtype)
        self.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            path, subfolder='text_encoder_2', dtype=self.dtype)
        self.text_encoder_3 = T5EncoderModel.from_pretrained(path, subfolder='text_encoder_3',
                                                             dtype=self.dtype)
        self.tokenizer = CLIPTokenizer.from_pretrained(path, subfolder='tokenizer')
        self.tokenizer_2 = CLIPTokenizer.from_pretrained(path, subfolder='tokenizer_2')
        self.tokenizer_3 = T5TokenizerFast.from_pretrained(path, subfolder='tokenizer_3')
        # Text components only, for the pipeline's own encode_prompt; the modules are shared,
        # so moving the backbone to a device moves them too.
        self._text_pipeline = StableDiffusion3Pipeline(
            transformer=None, scheduler=None, vae=None, text_encoder=self.text_encoder,
            tokenizer=self.tokenizer, text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2, text_encoder_3=self.text_encoder_3,
            tokenizer_3=self.tokenizer_3)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.text_encoder, self.text_encoder_2, self.text_encoder_3]

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # -------------------------------------------------------------------------------- protocol
    def _encode_texts(self, texts: list[str]) -> Condition:
        """``prompt_embeds (B, 77 + T5 len, T5 dim)`` and ``pooled_prompt_embeds (B, 2 CLIP)``."""
        embeds, _, pooled, _ = self._text_pipeline.encode_prompt(
            texts, None, None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
        return {'prompt_embeds': embeds.to(self.dtype),
                'pooled_prompt_embeds': pooled.to(self.dtype)}

    def _velocity(self, net: nn.Module, role: str, x: Tensor, sigma: Tensor,
                  cond: Condition) -> Tensor:
        # SD3 takes the model timestep 1000 sigma as is (fp32, as the pipeline passes it).
        timestep = sigma_to_timestep(sigma.float())
        return net(hidden_states=x.to(self.dtype), timestep=timestep,
                   encoder_hidden_states=cond['prompt_embeds'],
                   pooled_projections=cond['pooled_prompt_embeds'], return_dict=False)[0]

    def sigma_schedule(self, step_list: Sequence[int], latent_shape: Sequence[int]) -> Tensor:
        """Static shift of the scheduler config; the latent shape does not enter."""
        return step_list_to_sigmas(step_list, shift=self.shift).to(self.device)

    def latent_shape(self) -> tuple[int, ...]:
        side = self.resolution // self.vae_scale_factor
        return (self.fake_score.config.in_channels, side, side)

    def decode(self, x: Tensor) -> Tensor:
        """Latents to fp32 images in [0, 1], ``(B, 3, R, R)``; differentiable in ``x``."""
        return decode_scaled(self.vae, x)

    def encode_images(self, images: Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> Tensor:
        """Images in [0, 1] to fp32 latents, the inverse of :meth:`decode`."""
        return encode_scaled(self.vae, images, sample, generator)
