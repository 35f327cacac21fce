"""PickScore: the PickScore_v1 CLIP-H/14 preference model (differentiable).

The weights are the transformers snapshot of ``yuvalkirstain/PickScore_v1`` in
``<root>/PickScore_v1`` (``config.json``, ``model.safetensors`` or ``pytorch_model.bin``), with
the tokenizer (and ``preprocessor_config.json``) of the processor it was trained with,
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, copied into the same folder. ``root`` is resolved by
:func:`rtdmd.rewards.weights.reward_weights_root`.
"""

from __future__ import annotations

from torch import Tensor

from rtdmd.registry import REWARDS

from .clip_score import CLIPPairScorer


@REWARDS.register_module()
class PickScore(CLIPPairScorer):
    """``exp(logit_scale) * cos(image, text) / 26``.

    The release scores ``model.logit_scale.exp() * image_embeds @ text_embeds`` (about 21-24)
    and divides by 26 to bring it near 1; paper tables report the undivided value.
    """

    default_path = 'PickScore_v1'
    source = ('yuvalkirstain/PickScore_v1 (model) plus the tokenizer / preprocessor files of '
              'laion/CLIP-ViT-H-14-laion2B-s32B-b79K')
    output_scale = 'logit_scale*cos/26 ~0.86-0.92'
    #: The release's divisor.
    divisor = 26.0

    def scale(self, cosine: Tensor) -> Tensor:
        return self.model.logit_scale.exp().float() * cosine / self.divisor
