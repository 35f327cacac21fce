"""The AutoencoderKL convention SD3 and FLUX.1 share: latents = (z - shift) * scale."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def decode_scaled(vae: nn.Module, x: Tensor) -> Tensor:
    """Latents to fp32 images in [0, 1], ``(B, 3, H, W)``; differentiable in ``x``.

    ``z = x / scaling_factor + shift_factor``, decoded, mapped from [-1, 1] to [0, 1].
    """
    config = vae.config
    z = (x.float() / config.scaling_factor + config.shift_factor).to(vae.dtype)
    images = vae.decode(z, return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def encode_scaled(vae: nn.Module, images: Tensor, sample: bool = False,
                  generator: torch.Generator | None = None) -> Tensor:
    """Images in [0, 1] to fp32 latents, the inverse of :func:`decode_scaled`.

    Args:
        vae: an ``AutoencoderKL`` with ``scaling_factor`` and ``shift_factor``.
        images: pixel values in [0, 1], ``(B, 3, H, W)``.
        sample: draw from the VAE posterior instead of taking its mode.
        generator: RNG of the posterior sample.
    """
    config = vae.config
    posterior = vae.encode((images * 2 - 1).to(vae.dtype)).latent_dist
    z = posterior.sample(generator) if sample else posterior.mode()
    return (z.float() - config.shift_factor) * config.scaling_factor
