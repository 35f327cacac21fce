"""FLUX.1-dev: guidance-distilled MMDiT with CLIP-L + T5 text and a 16-channel VAE.

Family specifics behind the protocol (ALGORITHM.md 1.2, 1.4, 2.1, 6.1; pitfalls 21-23):

- latents stay unpacked ``(16, R/8, R/8)`` everywhere outside this file; :meth:`_forward` packs
  them into 2x2 patches of 64 channels (``FluxPipeline._pack_latents``), builds the image
  position ids ``(0, h, w)`` on the packed grid and zero text ids, and unpacks the output;
- the transformer takes ``timestep = sigma`` in [0, 1] (``FluxTransformer2DModel.forward``
  multiplies by 1000 itself, as does the pipeline's ``timestep / 1000``);
- guidance is *distilled*: the guidance scale is the input of the guidance embedding in one
  forward pass, not a second unconditional pass. The teacher runs with 3.5, generator and fake
  score with 1.0 (never ``None``), so :meth:`predict_velocity` routes ``guidance_scale`` there;
- text: CLIP-L ``pooler_output`` (768) as the pooled projection and T5-XXL's last hidden state
  (``max_sequence_length`` 512) as the sequence, encoded by ``FluxPipeline.encode_prompt``;
- the few-step schedule uses the dynamic exponential shift with ``mu`` linear in the number of
  packed tokens (scheduler config of the snapshot): 512 px gives ``[1, .849, .653, .385, 0]``;
- decode: ``x / scaling_factor + shift_factor`` through the VAE, then ``[-1, 1] -> [0, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from diffusers.models.transformers.transformer_flux import (
    FluxSingleTransformerBlock,
    FluxTransformerBlock,
)
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from rtdmd.functional.timesteps import flux_dynamic_mu, step_list_to_sigmas
from rtdmd.registry import MODELS

from .base import Condition
from .diffusers_base import DiffusersBackbone
from .vae import decode_scaled, encode_scaled

_WEIGHTS = ['config.json', '*weights']


@MODELS.register_module()
class FluxBackbone(DiffusersBackbone):
    """FLUX.1-dev (``black-forest-labs/FLUX.1-dev``) behind the backbone protocol.

    Args:
        pretrained: the diffusers snapshot (teacher, fake score and generator base), relative
            to ``weights_root`` unless absolute.
        generator_init: an optional other transformer for the generator (none in the release).
        weights_root: root of relative paths (default ``$RTDMD_WEIGHTS`` or ``weights``).
        lora: LoRA settings (``rank``, ``alpha``, ``init``, ``target_modules``).
        dtype: weight dtype (``'bfloat16'`` as released).
        gradient_checkpointing: checkpoint the transformer blocks when gradients flow.
        resolution: image side in pixels, a multiple of 16 (8x VAE, 2x2 packing).
        max_sequence_length: T5 tokens (512 in the release).
        repo_id: the Hub repository the snapshot comes from (named by the missing-weights
            error); ``None`` is FLUX.1-dev's.
        vae_gradient_checkpointing, lora_compute: see :class:`DiffusersBackbone`.
    """

    transformer_class = FluxTransformer2DModel
    shard_block_classes = (FluxTransformerBlock, FluxSingleTransformerBlock)
    pipeline_class = FluxPipeline
    pipeline_component_names = ('scheduler', 'vae', 'text_encoder', 'tokenizer',
                                'text_encoder_2', 'tokenizer_2')
    default_repo_id = 'black-forest-labs/FLUX.1-dev'
    # Matches the double-stream blocks (all eight) and the single-stream blocks (to_q/k/v; they
    # have no to_out or added projections), as the release's list does.
    lora_targets = ('attn.to_q', 'attn.to_k', 'attn.to_v', 'attn.to_out.0', 'attn.add_q_proj',
                    'attn.add_k_proj', 'attn.add_v_proj', 'attn.to_add_out')
    components = {
        'transformer': _WEIGHTS, 'vae': _WEIGHTS, 'text_encoder': _WEIGHTS,
        'text_encoder_2': _WEIGHTS, 'tokenizer': ['tokenizer_config.json'],
        'tokenizer_2': ['tokenizer_config.json'], 'scheduler': ['scheduler_config.json'],
    }

    def __init__(self, pretrained: str, generator_init: str | None = None,
                 weights_root: str | None = None, lora: dict | None = None,
                 dtype: str = 'bfloat16', gradient_checkpointing: bool = True,
                 resolution: int = 512, max_sequence_length: int = 512,
                 repo_id: str | None = None, vae_gradient_checkpointing: bool = True,
                 lora_compute: str = 'autocast') -> None:
        if resolution % 16:
            raise ValueError(f'FLUX needs a resolution divisible by 16 (8x VAE, 2x2 packing), '
                             f'got {resolution}')
        if not 0 < max_sequence_length <= 512:
            raise ValueError(f'max_sequence_length must lie in [1, 512], got '
                             f'{max_sequence_length}')
        super().__init__(pretrained, generator_init=generator_init, weights_root=weights_root,
                         lora=lora, dtype=dtype, gradient_checkpointing=gradient_checkpointing,
                         resolution=resolution, repo_id=repo_id,
                         vae_gradient_checkpointing=vae_gradient_checkpointing,
                         lora_compute=lora_compute)
        self.max_sequence_length = max_sequence_length

    # ------------------------------------------------------------------------------ loading
    def load_components(self, path: str) -> None:
        """Frozen VAE, CLIP-L and T5 encoders, tokenizers and the scheduler config."""
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path,
                                                                         subfolder='scheduler')
        self.vae = AutoencoderKL.from_pretrained(path, subfolder='vae', torch_dtype=self.dtype)
        self.text_encoder = CLIPTextModel.from_pretrained(path, subfolder='text_encoder',
                                                          dtype=self.dtype)
        self.text_encoder_2 = T5EncoderModel.from_pretrained(path, subfolder='text_encoder_2',
                                                             dtype=self.dtype)
        self.tokenizer = CLIPTokenizer.from_pretrained(path, subfolder='tokenizer')
        self.tokenizer_2 = T5TokenizerFast.from_pretrained(path, subfolder='tokenizer_2')
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        # A text-only pipeline around the same modules, for the pipeline's own encode_prompt.
        self._text_pipeline = FluxPipeline(
            scheduler=self.scheduler, vae=None, text_encoder=self.text_encoder,
            tokenizer=self.tokenizer, text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2, transformer=None)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.text_encoder, self.text_encoder_2]

    # ----------------------------------------------------------------------------- protocol
    def _encode_texts(self, texts: list[str]) -> Condition:
        """T5 ``prompt_embeds`` (B, T, 4096) and CLIP ``pooled_prompt_embeds`` (B, 768)."""
        embeds, pooled, _ = self._text_pipeline.encode_prompt(
            texts, device=self.device,
            max_sequence_length=self.max_sequence_length)
        return {'prompt_embeds': embeds, 'pooled_prompt_embeds': pooled}

    def predict_velocity(self, role: str, x: Tensor, sigma: Tensor | float, cond: Condition,
                         guidance_scale: float | Tensor = 1.0) -> Tensor:
        """Velocity of ``role`` with ``guidance_scale`` fed to the guidance embedding.

        FLUX.1-dev is guidance-distilled: one forward pass whatever the scale, the empty-prompt
        condition is never used. Returns float32.
        """
        sigma = _per_sample(sigma, x)
        guidance = _per_sample(guidance_scale, x)
        with self.compute_context(x.device):
            return self._forward(self.net(role), x, sigma, cond, guidance).float()

    def _velocity(self, net: nn.Module, role: str, x: Tensor, sigma: Tensor,
                  cond: Condition) -> Tensor:
        """One forward at guidance 1.0 (the generator's and fake score's, pitfall 21)."""
        return self._forward(net, x, sigma, cond, torch.ones_like(sigma, dtype=torch.float32))

    def _forward(self, net: nn.Module, x: Tensor, sigma: Tensor, cond: Condition,
                 guidance: Tensor) -> Tensor:
        """Pack ``x`` (B, C, H, W), run ``net`` at ``timestep = sigma``, unpack the velocity."""
        b, c, h, w = x.shape
        hidden = FluxPipeline._pack_latents(x.to(self.dtype), b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, self.dtype)
        text = cond['prompt_embeds'].to(self.dtype)
        txt_ids = torch.zeros(text.shape[1], 3, device=x.device, dtype=self.dtype)
        out = net(hidden_states=hidden, timestep=sigma.to(x.device, torch.float32),
                  guidance=guidance.to(x.device, torch.float32),
                  pooled_projections=cond['pooled_prompt_embeds'].to(self.dtype),
                  encoder_hidden_states=text, txt_ids=txt_ids, img_ids=img_ids,
                  return_dict=False)[0]
        scale = self.vae_scale_factor
        return FluxPipeline._unpack_latents(out, h * scale, w * scale, scale)

    def sigma_schedule(self, step_list: Sequence[int], latent_shape: Sequence[int]) -> Tensor:
        """Shifted sigmas and a trailing 0; ``mu`` from the packed token count (dynamic shift)."""
        height, width = latent_shape[-2:]
        config = self.scheduler.config
        if not config.get('use_dynamic_shifting', False):
            return step_list_to_sigmas(step_list, shift=config.get('shift', 1.0)).to(self.device)
        mu = flux_dynamic_mu((height // 2) * (width // 2),
                             base_seq_len=config.get('base_image_seq_len', 256),
                             max_seq_len=config.get('max_image_seq_len', 4096),
                             base_shift=config.get('base_shift', 0.5),
                             max_shift=config.get('max_shift', 1.15))
        return step_list_to_sigmas(step_list, mu=mu).to(self.device)

    def latent_shape(self) -> tuple[int, ...]:
        side = self.resolution // self.vae_scale_factor
        return (self.vae.config.latent_channels, side, side)

    def decode(self, x: Tensor) -> Tensor:
        """Latents to fp32 images in [0, 1], ``(B, 3, R, R)``; differentiable in ``x``."""
        return decode_scaled(self.vae, x)

    def encode_images(self, images: Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> Tensor:
        """Images in [0, 1] to fp32 latents, the inverse of :meth:`decode`."""
        return encode_scaled(self.vae, images, sample, generator)


def _per_sample(value: float | Tensor, x: Tensor) -> Tensor:
    """A float32 ``(B,)`` tensor on ``x``'s device from a scalar or per-sample value."""
    value = torch.as_tensor(value, dtype=torch.float32, device=x.device)
    return value.expand(x.shape[0]) if value.ndim == 0 else value
