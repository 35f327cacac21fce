"""The FLUX.2-klein teacher family at shapes-world size (``Flux2KleinPipeline`` layout)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rtdmd.models.backbones.base import Condition
from rtdmd.registry import MODELS

from .base import TeacherFamily, vae_args
from .tokenizers import qwen_tokenizer


def _pipe():
    from diffusers import Flux2KleinPipeline

    return Flux2KleinPipeline


@MODELS.register_module()
class Flux2ShapesFamily(TeacherFamily):
    """FLUX.2-klein at shapes-world size: Qwen3, an ``AutoencoderKLFlux2``, a FLUX.2 MMDiT.

    As in the release: the VAE's latents are 2x2-patchified and normalised by its batch-norm
    statistics (``in_channels = 4 latent_channels``); the text condition is the Qwen3 hidden
    states of ``text_layers`` stacked on features (``joint_attention_dim = len(text_layers) x
    qwen_dim``) on the chat template; the transformer takes ``timestep = sigma``; no guidance
    embedding (real CFG); the scheduler shifts dynamically with the pipeline's empirical ``mu``.

    Args:
        image_size: pixel side.
        vae_channels: ``block_out_channels`` of the VAE.
        latent_channels: VAE latent channels before patchification.
        num_layers: double-stream blocks.
        num_single_layers: single-stream blocks.
        attention_head_dim: head width (= the sum of ``axes_dims_rope``, 4 equal axes).
        num_attention_heads: heads.
        qwen_dim: Qwen3 width.
        qwen_layers: Qwen3 layers.
        text_layers: Qwen3 hidden states stacked as the condition (release: 9, 18, 27 of 36).
        text_tokens: Qwen3 tokens per prompt (the chat template of the longest prompt is 23).
    """

    text_names = ('text_encoder',)

    def __init__(self, image_size: int = 32, vae_channels: Sequence[int] = (32, 64),
                 latent_channels: int = 4, num_layers: int = 2, num_single_layers: int = 2,
                 attention_head_dim: int = 32, num_attention_heads: int = 4,
                 qwen_dim: int = 32, qwen_layers: int = 3,
                 text_layers: Sequence[int] = (1, 2, 3), text_tokens: int = 24) -> None:
        if attention_head_dim % 4:
            raise ValueError(f'attention_head_dim must split into 4 rope axes, got '
                             f'{attention_head_dim}')
        if not all(0 <= i <= qwen_layers for i in text_layers):
            raise ValueError(f'text_layers {tuple(text_layers)} must lie in [0, {qwen_layers}]')
        self.image_size, self.vae_channels = image_size, tuple(vae_channels)
        self.latent_channels = latent_channels
        self.dit = dict(num_layers=num_layers, num_single_layers=num_single_layers,
                        attention_head_dim=attention_head_dim,
                        num_attention_heads=num_attention_heads)
        self.qwen_dim, self.qwen_layers = qwen_dim, qwen_layers
        self.text_layers, self.text_tokens = tuple(text_layers), text_tokens
        self.tokenizer = qwen_tokenizer()

    # ----------------------------------------------------------------------------- building
    def make_vae(self) -> nn.Module:
        from diffusers import AutoencoderKLFlux2

        return AutoencoderKLFlux2(**vae_args(self.vae_channels),
                                  latent_channels=self.latent_channels,
                                  sample_size=self.image_size, use_quant_conv=False,
                                  use_post_quant_conv=False)

    def make_text_encoders(self) -> nn.ModuleDict:
        from transformers import Qwen3Config, Qwen3ForCausalLM

        heads = max(1, self.qwen_dim // 16)
        return nn.ModuleDict(dict(text_encoder=Qwen3ForCausalLM(Qwen3Config(
            vocab_size=len(self.tokenizer), hidden_size=self.qwen_dim,
            intermediate_size=3 * self.qwen_dim, num_hidden_layers=self.qwen_layers,
            num_attention_heads=heads, num_key_value_heads=heads, head_dim=16,
            max_position_embeddings=max(64, self.text_tokens), tie_word_embeddings=True,
            pad_token_id=self.tokenizer.pad_token_id))))

    def make_transformer(self) -> nn.Module:
        from diffusers import Flux2Transformer2DModel

        axis = self.dit['attention_head_dim'] // 4
        return Flux2Transformer2DModel(
            patch_size=1, in_channels=4 * self.latent_channels,
            joint_attention_dim=len(self.text_layers) * self.qwen_dim,
            timestep_guidance_channels=64, mlp_ratio=3.0, axes_dims_rope=(axis,) * 4,
            guidance_embeds=False, **self.dit)

    def _scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        # FLUX.2-klein's scheduler config: dynamic exponential shift.
        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
            time_shift_type='exponential', base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096)

    # ------------------------------------------------------------------------------ running
    def encode_prompts(self, text: nn.ModuleDict, prompts: Sequence[str]) -> Condition:
        """``Flux2KleinBackbone.encode_prompts`` with gradients (the pipeline's function)."""
        encoder = text['text_encoder']
        device = next(encoder.parameters()).device
        embeds = _pipe()._get_qwen3_prompt_embeds(
            encoder.get_decoder(), self.tokenizer, list(prompts), dtype=torch.float32,
            device=device, max_sequence_length=self.text_tokens,
            hidden_states_layers=self.text_layers)
        return {'prompt_embeds': embeds, 'text_ids': _pipe()._prepare_text_ids(embeds).to(device)}

    def velocity(self, transformer: nn.Module, x: Tensor, sigma: Tensor,
                 cond: Condition) -> Tensor:
        """``Flux2KleinBackbone._velocity``: tokens with 4-axis ids, ``timestep = sigma``."""
        pipe = _pipe()
        _, _, height, width = x.shape
        img_ids = pipe._prepare_latent_ids(x).to(x.device)
        out = transformer(hidden_states=pipe._pack_latents(x),
                          encoder_hidden_states=cond['prompt_embeds'], timestep=sigma.float(),
                          guidance=None, txt_ids=cond['text_ids'], img_ids=img_ids,
                          return_dict=False)[0]
        return pipe._unpack_latents_with_ids(out, img_ids, height, width)

    def fit_latent_stats(self, vae: nn.Module, raw: Tensor) -> None:
        """The batch norm's running statistics: per-channel mean and variance of the
        patchified latents of the world's images."""
        patches = _pipe()._patchify_latents(raw.float())
        with torch.no_grad():
            vae.bn.running_mean.copy_(patches.mean(dim=(0, 2, 3)))
            vae.bn.running_var.copy_(patches.var(dim=(0, 2, 3)))

    def to_latents(self, vae: nn.Module, images: Tensor) -> Tensor:
        patches = _pipe()._patchify_latents(self.raw_latents(vae, images).float())
        mean = vae.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        return (patches - mean) / std

    def save_pretrained(self, path: str, vae: nn.Module, text: nn.ModuleDict,
                        transformer: nn.Module, dtype: torch.dtype = torch.float16) -> None:
        """The ``Flux2KleinPipeline`` layout (base model, not distilled), weights in ``dtype``."""
        copies = [copy.deepcopy(m).to(dtype).eval() for m in (vae, text, transformer)]
        _pipe()(scheduler=self._scheduler(), vae=copies[0],
                text_encoder=copies[1]['text_encoder'], tokenizer=self.tokenizer,
                transformer=copies[2], is_distilled=False).save_pretrained(
                    path, safe_serialization=True)

    def backbone_args(self) -> dict:
        return dict(type='Flux2KleinBackbone', resolution=self.image_size,
                    max_sequence_length=self.text_tokens,
                    text_encoder_out_layers=self.text_layers)
