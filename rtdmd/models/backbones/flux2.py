"""FLUX.2-klein 4B / 9B: a Qwen3-conditioned MMDiT on batch-norm-normalised, patchified latents.

Family specifics behind the protocol (ALGORITHM.md 1.2, 1.4, 2.1, 6.1; pitfalls 20, 22, 23),
each done with ``Flux2KleinPipeline``'s own static helpers so that the numbers are the pipeline's:

- roles (pitfall 20): teacher and fake score start from ``FLUX.2-klein-base-*`` (``pretrained``),
  the generator from the step-distilled ``FLUX.2-klein-*`` (``generator_init``);
- latents are ``(in_channels = 128, R/16, R/16)``: the VAE's 32-channel latents already 2x2
  patchified and normalised by the VAE's batch-norm statistics. :meth:`_velocity` flattens them
  to ``(B, h w, 128)`` tokens (``_pack_latents``) with 4-axis position ids ``(t, h, w, l)``
  ``(B, L, 4)`` (``_prepare_latent_ids``) and scatters the output back by those ids;
- the transformer takes ``timestep = sigma`` in [0, 1]: ``Flux2Transformer2DModel.forward``
  multiplies by 1000 itself (the pipeline passes ``t / 1000``). klein has no guidance
  embedding; CFG is real CFG with the empty prompt (teacher 4.0), done by ``predict_velocity``;
- text: Qwen3 on the chat template (one user message, generation prompt, ``enable_thinking``
  off), padded to ``max_sequence_length`` (512); hidden states of ``text_encoder_out_layers``
  (9, 18, 27) stacked on features (3 x 2560 = 7680 for the 4B); text ids ``(0, 0, 0, l)``;
- sigmas: the scheduler's exponential shift with the pipeline's *empirical* ``mu`` of the token
  count ``L = (R/16)^2`` and the number of steps: 512 px, 4 steps gives
  ``[1, .958, .884, .718, 0]``;
- decode: ``x * sqrt(bn.running_var + eps) + bn.running_mean``, un-patchify 2x2, VAE decode,
  ``[-1, 1] -> [0, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Transformer2DModel,
)
from diffusers.models.transformers.transformer_flux2 import (
    Flux2SingleTransformerBlock,
    Flux2TransformerBlock,
)
from torch import Tensor, nn
from transformers import Qwen2TokenizerFast, Qwen3ForCausalLM

from rtdmd.functional.timesteps import flux2_empirical_mu, step_list_to_sigmas
from rtdmd.registry import MODELS

from .base import Condition
from .diffusers_base import DiffusersBackbone

_WEIGHTS = ['config.json', '*weights']
#: LoRA targets of the release (ALGORITHM.md 6.1) that are module-name suffixes: the attention of
#: the double-stream blocks and the fused QKV+MLP input of the single-stream blocks.
DOUBLE_STREAM_TARGETS = ('to_q', 'to_k', 'to_v', 'to_out.0', 'add_q_proj', 'add_k_proj',
                         'add_v_proj', 'to_add_out', 'to_qkv_mlp_proj')
PIPE = Flux2KleinPipeline  # its static helpers: prompt embeds, ids, (un)packing, (un)patchify


def flux2_lora_targets(num_single_layers: int) -> list[str]:
    """The release's FLUX.2 LoRA target list for a transformer with that many single blocks.

    The single blocks' output projection ``attn.to_out`` is a ``Linear`` named like the double
    blocks' ``attn.to_out`` ``ModuleList`` (which LoRA cannot wrap), so it is listed per block
    by its full name, as the release lists ``single_transformer_blocks.{i}.attn.to_out`` for
    i = 0..19 (4B) or 0..23 (9B).
    """
    return [*DOUBLE_STREAM_TARGETS,
            *(f'single_transformer_blocks.{i}.attn.to_out' for i in range(num_single_layers))]


@MODELS.register_module()
class Flux2KleinBackbone(DiffusersBackbone):
    """FLUX.2-klein (4B or 9B) behind the backbone protocol.

    Args:
        pretrained: the ``FLUX.2-klein-base-*`` snapshot (teacher and fake score; text encoder,
            tokenizer, VAE and scheduler come from it too), relative to ``weights_root``.
        generator_init: the step-distilled ``FLUX.2-klein-*`` snapshot the generator starts
            from (only its ``transformer/`` is read); ``None`` starts it from ``pretrained``.
        weights_root: root of relative paths (default ``$RTDMD_WEIGHTS`` or ``weights``).
        lora: LoRA settings (``rank``, ``alpha``, ``init``, ``target_modules``); without
            ``target_modules`` the release's list for the loaded transformer is used
            (:func:`flux2_lora_targets`).
        dtype: weight dtype (``'bfloat16'`` as released).
        gradient_checkpointing: checkpoint the transformer blocks when gradients flow.
        resolution: image side in pixels, a multiple of 16 (8x VAE, 2x2 patches).
        max_sequence_length: Qwen3 tokens per prompt (512 in the release).
        text_encoder_out_layers: hidden-state indices stacked into the text features.
        repo_id, generator_repo_id: Hugging Face repos of the two snapshots (named in the error
            raised when a snapshot is missing).
        vae_gradient_checkpointing, lora_compute: see :class:`DiffusersBackbone`.
    """

    transformer_class = Flux2Transformer2DModel
    shard_block_classes = (Flux2TransformerBlock, Flux2SingleTransformerBlock)
    pipeline_class = Flux2KleinPipeline
    pipeline_component_names = ('scheduler', 'vae', 'text_encoder', 'tokenizer')
    default_repo_id = 'black-forest-labs/FLUX.2-klein-base-4B'
    default_generator_repo_id = 'black-forest-labs/FLUX.2-klein-4B'
    lora_targets = DOUBLE_STREAM_TARGETS  # completed per transformer: default_lora_targets
    components = {
        'transformer': _WEIGHTS, 'vae': _WEIGHTS, 'text_encoder': _WEIGHTS,
        'tokenizer': ['tokenizer_config.json'], 'scheduler': ['scheduler_config.json'],
    }

    def __init__(self, pretrained: str, generator_init: str | None = None,
                 weights_root: str | None = None, lora: dict | None = None,
                 dtype: str = 'bfloat16', gradient_checkpointing: bool = True,
                 resolution: int = 512, max_sequence_length: int = 512,
                 text_encoder_out_layers: Sequence[int] = (9, 18, 27),
                 repo_id: str = 'black-forest-labs/FLUX.2-klein-base-4B',
                 generator_repo_id: str = 'black-forest-labs/FLUX.2-klein-4B',
                 vae_gradient_checkpointing: bool = True, lora_compute: str = 'autocast'
                 ) -> None:
        if resolution % 16:
            raise ValueError(f'FLUX.2 needs a resolution divisible by 16 (8x VAE, 2x2 patches), '
                             f'got {resolution}')
        if max_sequence_length < 1:
            raise ValueError(f'max_sequence_length must be >= 1, got {max_sequence_length}')
        super().__init__(pretrained, generator_init=generator_init, weights_root=weights_root,
                         lora=lora, dtype=dtype, gradient_checkpointing=gradient_checkpointing,
                         resolution=resolution, repo_id=repo_id,
                         vae_gradient_checkpointing=vae_gradient_checkpointing,
                         lora_compute=lora_compute,
                         generator_repo_id=generator_repo_id)
        self.max_sequence_length = max_sequence_length
        self.text_encoder_out_layers = tuple(text_encoder_out_layers)
        num_layers = self.text_encoder.config.num_hidden_layers
        if not all(0 <= i <= num_layers for i in self.text_encoder_out_layers):
            raise ValueError(f'text_encoder_out_layers {self.text_encoder_out_layers} must lie '
                             f'in [0, {num_layers}] (the text encoder has {num_layers} layers)')

    def default_lora_targets(self, transformer_config: dict) -> list[str]:
        """The release's list for a transformer with this many single-stream blocks."""
        return flux2_lora_targets(transformer_config['num_single_layers'])

    # ------------------------------------------------------------------------------ loading
    def load_components(self, path: str) -> None:
        """Frozen VAE, Qwen3 encoder, tokenizer and scheduler; the LoRA targets of the base."""
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path,
                                                                         subfolder='scheduler')
        config = self.scheduler.config
        if config.get('shift_terminal') or config.get('time_shift_type',
                                                      'exponential') != 'exponential':
            raise ValueError(f'{path}/scheduler: only the exponential shift without '
                             f'shift_terminal (FLUX.2-klein\'s) is supported')
        self.vae = AutoencoderKLFlux2.from_pretrained(path, subfolder='vae',
                                                      torch_dtype=self.dtype)
        self.text_encoder = Qwen3ForCausalLM.from_pretrained(path, subfolder='text_encoder',
                                                             dtype=self.dtype)
        self.tokenizer = Qwen2TokenizerFast.from_pretrained(path, subfolder='tokenizer')
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        transformer = Flux2Transformer2DModel.load_config(path, subfolder='transformer')
        self.num_single_layers = transformer['num_single_layers']

    def _load_transformer(self, path: str, gradient_checkpointing: bool) -> nn.Module:
        net = super()._load_transformer(path, gradient_checkpointing)
        if net.config.guidance_embeds:
            raise ValueError(f'{path}/transformer has a guidance embedding (FLUX.2-dev?); '
                             f'FLUX.2-klein has none and uses real CFG')
        if net.config.num_single_layers != self.num_single_layers:
            raise ValueError(f'{path}/transformer has {net.config.num_single_layers} single '
                             f'blocks, the base model {self.num_single_layers}: the generator '
                             f'init must be the same size as the base')
        return net

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.text_encoder]

    # ----------------------------------------------------------------------------- protocol
    def _encode_texts(self, texts: list[str]) -> Condition:
        """``prompt_embeds`` (B, T, 3 D) of the stacked Qwen3 layers and ``text_ids`` (B, T, 4).

        The pipeline's own function, run on the decoder stack: the hidden states are the causal
        LM's, without its vocabulary projection of every token (~0.4 TFLOP per prompt, unused).
        """
        embeds = PIPE._get_qwen3_prompt_embeds(
            self.text_encoder.get_decoder(), self.tokenizer, texts, dtype=self.dtype,
            device=self.device, max_sequence_length=self.max_sequence_length,
            hidden_states_layers=self.text_encoder_out_layers)
        return {'prompt_embeds': embeds,
                'text_ids': PIPE._prepare_text_ids(embeds).to(self.device)}

    def _velocity(self, net: nn.Module, role: str, x: Tensor, sigma: Tensor,
                  cond: Condition) -> Tensor:
        """Tokens and ids of ``x`` (B, C, h, w), one forward at ``timestep = sigma``, back."""
        _, _, height, width = x.shape
        img_ids = PIPE._prepare_latent_ids(x).to(x.device)
        out = net(hidden_states=PIPE._pack_latents(x.to(self.dtype)),
                  encoder_hidden_states=cond['prompt_embeds'].to(self.dtype),
                  timestep=sigma.to(x.device, torch.float32), guidance=None,
                  txt_ids=cond['text_ids'], img_ids=img_ids, return_dict=False)[0]
        return PIPE._unpack_latents_with_ids(out, img_ids, height, width)

    def sigma_schedule(self, step_list: Sequence[int], latent_shape: Sequence[int]) -> Tensor:
        """Shifted sigmas and a trailing 0: empirical ``mu`` of ``L = h w`` tokens and the steps."""
        height, width = latent_shape[-2:]
        config = self.scheduler.config
        if not config.get('use_dynamic_shifting', False):
            return step_list_to_sigmas(step_list, shift=config.get('shift', 1.0)).to(self.device)
        mu = flux2_empirical_mu(height * width, len(step_list))
        return step_list_to_sigmas(step_list, mu=mu).to(self.device)

    def latent_shape(self) -> tuple[int, ...]:
        side = self.resolution // (2 * self.vae_scale_factor)
        return (self.fake_score.config.in_channels, side, side)

    def _bn_stats(self) -> tuple[Tensor, Tensor]:
        """Mean and std ``(1, C, 1, 1)`` (float32) of the VAE's latent batch norm."""
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).float()
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1).float()
                         + self.vae.config.batch_norm_eps)
        return mean, std

    def decode(self, x: Tensor) -> Tensor:
        """Latents to images in [0, 1], float32; differentiable (reward back-propagation)."""
        mean, std = self._bn_stats()
        z = PIPE._unpatchify_latents(x.float() * std + mean)
        image = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def encode_images(self, images: Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> Tensor:
        """Images in [0, 1] ``(B, 3, H, W)`` to latents (float32), the inverse of :meth:`decode`.

        Args:
            images: pixel values in [0, 1].
            sample: draw from the VAE posterior instead of taking its mode (the pipeline's).
            generator: RNG of the posterior sample.
        """
        posterior = self.vae.encode((images * 2 - 1).to(self.vae.dtype)).latent_dist
        z = posterior.sample(generator) if sample else posterior.mode()
        mean, std = self._bn_stats()
        return (PIPE._patchify_latents(z.float()) - mean) / std
