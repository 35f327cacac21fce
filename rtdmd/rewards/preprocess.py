"""Differentiable image preprocessing for the CLIP-family reward models.

The reward models were trained on PIL images run through ``CLIPImageProcessor`` (resize the
shorter side to 224 with bicubic filtering, center crop 224 x 224, normalise with the CLIP
mean / std). Reward back-propagation needs the same recipe on float tensors, with gradients, so
it is written here with tensor ops only (``F.interpolate(..., antialias=True)``, slicing,
affine normalisation). It matches torchvision's ``Resize(size, BICUBIC, antialias=True) ->
CenterCrop(size) -> Normalize(mean, std)`` on tensors and PIL's bicubic resize up to the
filter / uint8-rounding differences measured in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: The OpenAI CLIP normalisation (also used by the LAION ViT-H-14 processor of PickScore).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_shorter_side(images: Tensor, size: int) -> Tensor:
    """Bicubic, antialiased resize of ``(B, C, H, W)`` so that ``min(H, W) == size``.

    The longer side is ``int(size * long / short)`` (truncated), as in torchvision's ``Resize``
    and transformers' ``get_resize_output_image_size``.
    """
    h, w = images.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, int(size * long / short)
    out_h, out_w = (new_short, new_long) if h <= w else (new_long, new_short)
    if (out_h, out_w) == (h, w):
        return images
    return F.interpolate(images, size=(out_h, out_w), mode='bicubic', align_corners=False,
                         antialias=True)


def center_crop(images: Tensor, size: int) -> Tensor:
    """Center crop ``(B, C, H, W)`` to ``size x size`` (torchvision's rounding of the offset)."""
    h, w = images.shape[-2:]
    if h < size or w < size:
        raise ValueError(f'cannot center-crop {size} from an image of {h}x{w}')
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return images[..., top:top + size, left:left + size]


def clip_preprocess(images: Tensor, size: int = 224, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD) -> Tensor:
    """CLIP's resize -> center crop -> normalise on float images in [0, 1], differentiably.

    Args:
        images: ``(B, 3, H, W)`` floats in [0, 1].
        size: the model's input side (224 for ViT-L/14 and ViT-H/14).
        mean: per-channel mean of the normalisation.
        std: per-channel standard deviation of the normalisation.

    Returns:
        ``(B, 3, size, size)`` normalised pixel values, in the dtype of ``images`` (computed in
        float32 at least, since bicubic resampling in half precision loses ~1e-2).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f'expected images (B, 3, H, W), got shape {tuple(images.shape)}')
    dtype = images.dtype
    x = images.float() if dtype in (torch.float16, torch.bfloat16) else images
    x = center_crop(resize_shorter_side(x, size), size)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return ((x - m) / s).to(dtype)
