"""PickScore on a tiny random-weight CLIPModel saved in the layout of yuvalkirstain/PickScore_v1.

The folder holds the model plus the processor files of laion/CLIP-ViT-H-14 (whose tokenizer
pads with ``'!'``, unlike OpenAI's), written with ``save_pretrained`` and read back through the
scorer's own loading path.
"""

from __future__ import annotations

import math
import os.path as osp

import numpy as np
import pytest
import torch

from rtdmd.registry import REWARDS
from rtdmd.rewards.weights import MissingRewardWeightsError
from rtdmd.testing.rewards import build_tiny_clip_dir
from tests.test_rewards.test_clip_score import PROMPTS, _photos

#: PickScore_v1's learnt temperature is about exp(4.6) ~ 100; any value checks the scaling.
LOGIT_SCALE = math.log(90.0)


@pytest.fixture(scope='module')
def pick_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('rewards'))
    build_tiny_clip_dir(osp.join(root, 'PickScore_v1'), pad_token='!', seed=1,
                        logit_scale=LOGIT_SCALE)
    return root


@pytest.fixture(scope='module')
def scorer(pick_root):
    import rtdmd.rewards  # noqa: F401  (registers)

    return REWARDS.build(dict(type='PickScore', root=pick_root))


def test_shape_determinism_and_batch_invariance(scorer) -> None:
    images = _photos()
    assert scorer.differentiable and scorer.output_scale
    r = scorer(images, PROMPTS)
    assert r.shape == (3,) and r.dtype == torch.float32
    assert torch.all(r.abs() <= 90.0 / 26 + 1e-5)
    torch.testing.assert_close(scorer(images, PROMPTS), r, rtol=0, atol=0)
    one_by_one = torch.cat([scorer(images[i:i + 1], PROMPTS[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(one_by_one, r, rtol=1e-5, atol=1e-5)


def test_gradient_reaches_the_images(scorer) -> None:
    images = _photos().requires_grad_(True)
    scorer(images, PROMPTS).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in scorer.parameters())


def test_matches_the_release_recipe_on_pil(scorer) -> None:
    """Release: processor on PIL (``padding=True``) -> ``logit_scale.exp() * cos`` / 26.

    Only the preprocessing differs (tensor vs PIL bicubic, uint8 rounding): on the tiny CLIP
    scorer this moves a cosine by ~1e-4 to ~3e-4, i.e. measured max 8.7e-4 here after the
    x90/26 scale (scores ~0.1-0.8 in magnitude); bound 5e-3.
    The release pads to the longest prompt; the scorer pads to 77, which gives the same
    embeddings (causal attention and end-of-text pooling never see the padding).
    """
    from PIL import Image
    from transformers import CLIPImageProcessor

    images = _photos()
    uint8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    processor = CLIPImageProcessor.from_pretrained(scorer.path)
    pixels = processor(images=[Image.fromarray(u) for u in uint8],
                       return_tensors='pt')['pixel_values']
    tokens = scorer.tokenizer(PROMPTS, padding=True, truncation=True, max_length=77,
                              return_tensors='pt')
    with torch.no_grad():
        image = scorer.model.get_image_features(
            pixel_values=torch.as_tensor(np.asarray(pixels))).pooler_output
        text = scorer.model.get_text_features(**tokens).pooler_output
        image = image / image.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        reference = (scorer.model.logit_scale.exp() * text @ image.T).diagonal() / 26
    torch.testing.assert_close(scorer(images, PROMPTS), reference, rtol=0, atol=5e-3)


def test_missing_weights_name_the_scorer_and_sources(tmp_path) -> None:
    import rtdmd.rewards  # noqa: F401

    with pytest.raises(MissingRewardWeightsError, match='PickScore') as err:
        REWARDS.build(dict(type='PickScore', root=str(tmp_path)))
    message = str(err.value)
    assert 'PickScore_v1' in message and 'laion/CLIP-ViT-H-14' in message
    assert 'config.json' in message
