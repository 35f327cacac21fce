"""The SD3 teacher family at shapes-world size (``StableDiffusion3Pipeline`` layout)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rtdmd.functional.timesteps import sigma_to_timestep
from rtdmd.models.backbones.base import Condition
from rtdmd.registry import MODELS

from .base import TeacherFamily, vae_args
from .tokenizers import clip_tokenizer, t5_tokenizer


@MODELS.register_module()
class SD3ShapesFamily(TeacherFamily):
    """SD3 at shapes-world size: CLIP-L, CLIP-G, T5, an ``AutoencoderKL``, an SD3 MMDiT.

    Text (as ``StableDiffusion3Pipeline.encode_prompt``): the two CLIP encoders (hidden and
    projection ``clip_dim``, ``hidden_states[-2]``) give ``2 clip_dim`` features zero-padded to
    the T5 width ``t5_dim`` (the MMDiT's ``joint_attention_dim``) and concatenated on the
    sequence with T5; pooled = both projections (``pooled_projection_dim = 2 clip_dim``).

    Args:
        image_size: pixel side.
        vae_channels: ``block_out_channels`` of the VAE (one 2x down-sampling per entry after
            the first).
        latent_channels: VAE latent channels (= the MMDiT's in / out channels).
        num_layers: MMDiT blocks.
        attention_head_dim: MMDiT head width.
        num_attention_heads: MMDiT heads (width = heads x head width).
        clip_dim: width of each CLIP encoder.
        clip_layers: layers of each CLIP encoder.
        t5_dim: width of the T5 encoder.
        t5_layers: layers of the T5 encoder.
        text_tokens: CLIP tokens and T5 tokens per prompt (each).
        shift: the scheduler's static shift (3.0 in the SD3 releases).
    """

    text_names = ('text_encoder', 'text_encoder_2', 'text_encoder_3')

    def __init__(self, image_size: int = 32, vae_channels: Sequence[int] = (32, 64),
                 latent_channels: int = 4, num_layers: int = 4, attention_head_dim: int = 32,
                 num_attention_heads: int = 4, clip_dim: int = 32, clip_layers: int = 2,
                 t5_dim: int = 64, t5_layers: int = 2, text_tokens: int = 16,
                 shift: float = 3.0) -> None:
        if 2 * clip_dim > t5_dim:
            raise ValueError(f'the two CLIP widths (2 x {clip_dim}) must fit in the T5 width '
                             f'{t5_dim} (SD3 zero-pads CLIP features to it)')
        self.image_size, self.vae_channels = image_size, tuple(vae_channels)
        self.latent_channels = latent_channels
        self.dit = dict(num_layers=num_layers, attention_head_dim=attention_head_dim,
                        num_attention_heads=num_attention_heads)
        self.clip_dim, self.clip_layers = clip_dim, clip_layers
        self.t5_dim, self.t5_layers, self.text_tokens = t5_dim, t5_layers, text_tokens
        self.shift = shift
        self.tokenizers = (clip_tokenizer(model_max_length=text_tokens),
                           clip_tokenizer('!', model_max_length=text_tokens), t5_tokenizer())
        self._pipe = None

    # ----------------------------------------------------------------------------- building
    def make_vae(self) -> nn.Module:
        from diffusers import AutoencoderKL

        return AutoencoderKL(**vae_args(self.vae_channels), latent_channels=self.latent_channels,
                             sample_size=self.image_size, scaling_factor=1.0, shift_factor=0.0,
                             use_quant_conv=False, use_post_quant_conv=False)

    def _clip(self, tokenizer) -> nn.Module:
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=self.clip_dim,
            intermediate_size=4 * self.clip_dim, num_hidden_layers=self.clip_layers,
            num_attention_heads=max(1, self.clip_dim // 16),
            max_position_embeddings=self.text_tokens, projection_dim=self.clip_dim,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))

    def make_text_encoders(self) -> nn.ModuleDict:
        from transformers import T5Config, T5EncoderModel

        tok_l, tok_g, tok_t5 = self.tokenizers
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(tok_t5), d_model=self.t5_dim, d_kv=16, d_ff=4 * self.t5_dim,
            num_layers=self.t5_layers, num_heads=max(1, self.t5_dim // 16),
            pad_token_id=tok_t5.pad_token_id, eos_token_id=tok_t5.eos_token_id,
            decoder_start_token_id=tok_t5.pad_token_id))
        return nn.ModuleDict(dict(text_encoder=self._clip(tok_l), text_encoder_2=self._clip(tok_g),
                                  text_encoder_3=t5))

    def make_transformer(self) -> nn.Module:
        from diffusers import SD3Transformer2DModel

        side = self.image_size // 2 ** (len(self.vae_channels) - 1)
        width = self.dit['attention_head_dim'] * self.dit['num_attention_heads']
        return SD3Transformer2DModel(
            sample_size=side, patch_size=2, in_channels=self.latent_channels,
            out_channels=self.latent_channels, joint_attention_dim=self.t5_dim,
            caption_projection_dim=width, pooled_projection_dim=2 * self.clip_dim,
            pos_embed_max_size=side // 2, **self.dit)

    def _scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=self.shift)

    def _pipeline(self, text: nn.ModuleDict | None, vae: nn.Module | None = None,
                  transformer: nn.Module | None = None, scheduler=None):
        from diffusers import StableDiffusion3Pipeline

        tok_l, tok_g, tok_t5 = self.tokenizers
        encoders = {name: text[name] if text is not None else None for name in self.text_names}
        return StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=vae,
            text_encoder=encoders['text_encoder'], tokenizer=tok_l,
            text_encoder_2=encoders['text_encoder_2'], tokenizer_2=tok_g,
            text_encoder_3=encoders['text_encoder_3'], tokenizer_3=tok_t5)

    # ------------------------------------------------------------------------------ running
    def encode_prompts(self, text: nn.ModuleDict, prompts: Sequence[str]) -> Condition:
        """``SD3Backbone.encode_prompts`` with gradients (the pipeline's ``encode_prompt``)."""
        if self._pipe is None or self._pipe[0] is not text:  # one text-only pipeline per encoders
            self._pipe = (text, self._pipeline(text))
        pipe = self._pipe[1]
        device = next(text.parameters()).device
        embeds, _, pooled, _ = pipe.encode_prompt(
            list(prompts), None, None, device=device, do_classifier_free_guidance=False,
            max_sequence_length=self.text_tokens)
        return {'prompt_embeds': embeds, 'pooled_prompt_embeds': pooled}

    def velocity(self, transformer: nn.Module, x: Tensor, sigma: Tensor,
                 cond: Condition) -> Tensor:
        """``SD3Backbone._velocity``: the model timestep is ``1000 sigma``."""
        return transformer(hidden_states=x, timestep=sigma_to_timestep(sigma.float()),
                           encoder_hidden_states=cond['prompt_embeds'],
                           pooled_projections=cond['pooled_prompt_embeds'],
                           return_dict=False)[0]

    def fit_latent_stats(self, vae: nn.Module, raw: Tensor) -> None:
        """SD3's convention ``latents = (z - shift_factor) * scaling_factor``: global mean and
        one over the global std of the world's latents."""
        vae.register_to_config(shift_factor=float(raw.mean()),
                               scaling_factor=float(1 / raw.std()))

    def to_latents(self, vae: nn.Module, images: Tensor) -> Tensor:
        config = vae.config
        return (self.raw_latents(vae, images) - config.shift_factor) * config.scaling_factor

    def save_pretrained(self, path: str, vae: nn.Module, text: nn.ModuleDict,
                        transformer: nn.Module, dtype: torch.dtype = torch.float16) -> None:
        """The ``StableDiffusion3Pipeline`` layout, weights in ``dtype`` (safetensors)."""
        copies = [copy.deepcopy(m).to(dtype).eval() for m in (vae, text, transformer)]
        self._pipeline(copies[1], copies[0], copies[2], self._scheduler()).save_pretrained(
            path, safe_serialization=True)

    def backbone_args(self) -> dict:
        return dict(type='SD3Backbone', resolution=self.image_size,
                    max_sequence_length=self.text_tokens)
