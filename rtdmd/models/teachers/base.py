"""The teacher-family protocol of the shapes world (SD3 and FLUX.2-klein at toy size).

A family builds the real diffusers / transformers classes of one release at shapes-world size
(VAE, text encoders and tokenizers, transformer), runs them *with gradients* the way the
release's pipeline does (text encoding, the transformer call with its timestep convention and
latent packing, the VAE's latent normalisation), and saves them with the pipeline's own
``save_pretrained``, so that :class:`~rtdmd.models.backbones.SD3Backbone` and
:class:`~rtdmd.models.backbones.Flux2KleinBackbone` load the result as they load real weights.
The backbones' frozen, no-grad forward is the reference; a test checks both give the same
velocity on a saved teacher.

Both families use a VAE with one down-sampling block (32 px images, 16 x 16 latents) rather than
the release's three: at 32 px, 8x down-sampling would leave 4 x 4 latents for 7-12 px objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from rtdmd.models.backbones.base import Condition

#: Written next to ``model_index.json`` of a teacher folder: the backbone config that loads it
#: (all but ``pretrained``).
BACKBONE_RECORD = 'rtdmd_backbone.json'


class TeacherFamily:
    """How one family builds, runs and saves its components (subclasses fill it in).

    Attributes:
        text_names: the text-encoder attributes of the pipeline (trained with the transformer).
    """

    text_names: ClassVar[tuple[str, ...]]

    def make_vae(self) -> nn.Module:
        raise NotImplementedError

    def make_text_encoders(self) -> nn.ModuleDict:
        raise NotImplementedError

    def make_transformer(self) -> nn.Module:
        raise NotImplementedError

    def encode_prompts(self, text: nn.ModuleDict, prompts: Sequence[str]) -> Condition:
        raise NotImplementedError

    def velocity(self, transformer: nn.Module, x: Tensor, sigma: Tensor,
                 cond: Condition) -> Tensor:
        raise NotImplementedError

    def raw_latents(self, vae: nn.Module, images: Tensor) -> Tensor:
        """Images in [0, 1] to the VAE's posterior mode (un-normalised)."""
        return vae.encode(images * 2 - 1).latent_dist.mode()

    def fit_latent_stats(self, vae: nn.Module, raw: Tensor) -> None:
        """Set the VAE's latent normalisation from raw latents of the world's images."""
        raise NotImplementedError

    def to_latents(self, vae: nn.Module, images: Tensor) -> Tensor:
        """Images in [0, 1] to the normalised latents the transformer sees."""
        raise NotImplementedError

    def save_pretrained(self, path: str, vae: nn.Module, text: nn.ModuleDict,
                        transformer: nn.Module, dtype: torch.dtype = torch.float16) -> None:
        """Write the diffusers pipeline folder of the release's layout (safetensors)."""
        raise NotImplementedError

    def backbone_args(self) -> dict:
        """The backbone-config arguments a saved teacher needs besides ``pretrained``."""
        raise NotImplementedError


def vae_args(block_out_channels: Sequence[int], layers_per_block: int = 1,
             norm_num_groups: int = 8) -> dict:
    """Keyword arguments shared by both families' VAEs (no mid-block attention)."""
    n = len(block_out_channels)
    return dict(in_channels=3, out_channels=3, down_block_types=('DownEncoderBlock2D',) * n,
                up_block_types=('UpDecoderBlock2D',) * n,
                block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                norm_num_groups=norm_num_groups, mid_block_add_attention=False)
