"""CLIPScore on a tiny random-weight CLIPModel saved in the layout of openai/clip-vit-large-patch14.

The folder is written with ``save_pretrained`` (model, offline tokenizer, ``CLIPImageProcessor``)
and read back through the scorer's own loading path. The vision tower keeps the real input size
(224, so the real preprocessing runs) but is tiny otherwise (patch 32, width 32, 2 layers).
"""

from __future__ import annotations

import os.path as osp

import numpy as np
import pytest
import torch

from rtdmd.registry import REWARDS
from rtdmd.rewards.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess
from rtdmd.rewards.weights import MissingRewardWeightsError
from rtdmd.testing.rewards import build_tiny_clip_dir

PROMPTS = ['a photo of a cat', 'the red car', 'two dogs on a table']


@pytest.fixture(scope='module')
def clip_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('rewards'))
    build_tiny_clip_dir(osp.join(root, 'clip-vit-large-patch14'))
    return root


@pytest.fixture(scope='module')
def scorer(clip_root):
    import rtdmd.rewards  # noqa: F401  (registers)

    return REWARDS.build(dict(type='CLIPScore', root=clip_root))


def _photos() -> torch.Tensor:
    """Two real photographs (different sizes and aspect ratios), resized to 256x320 floats."""
    import skimage.data
    from PIL import Image

    imgs = [np.asarray(Image.fromarray(f()).resize((320, 256), Image.BICUBIC))
            for f in (skimage.data.chelsea, skimage.data.astronaut, skimage.data.coffee)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


def test_shape_determinism_and_batch_invariance(scorer) -> None:
    images = _photos()
    assert scorer.differentiable and scorer.output_scale
    r = scorer(images, PROMPTS)
    assert r.shape == (3,) and r.dtype == torch.float32
    assert torch.all(r.abs() <= 1)
    torch.testing.assert_close(scorer(images, PROMPTS), r, rtol=0, atol=0)
    one_by_one = torch.cat([scorer(images[i:i + 1], PROMPTS[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(one_by_one, r, rtol=1e-5, atol=1e-6)
    # The score depends on the prompt.
    assert not torch.allclose(scorer(images, PROMPTS[::-1]), r)


def test_gradient_reaches_the_images(scorer) -> None:
    images = _photos().requires_grad_(True)
    scorer(images, PROMPTS).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in scorer.parameters())


def test_matches_the_release_recipe_on_pil(scorer) -> None:
    """Release: ``CLIPProcessor`` on uint8 PIL -> ``logits_per_image`` diagonal / 100.

    The tensor path differs only by the bicubic filter (torch's antialiased bicubic vs PIL's)
    and by PIL's uint8 rounding after resizing: pixel differences average ~1e-3 (see
    :func:`test_preprocessing_parity`), which moves a cosine by far less than 1e-2.
    """
    from PIL import Image
    from transformers import CLIPImageProcessor

    images = _photos()
    uint8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    processor = CLIPImageProcessor.from_pretrained(scorer.path)
    pixels = processor(images=[Image.fromarray(u) for u in uint8],
                       return_tensors='pt')['pixel_values']
    tokens = scorer.tokenizer(PROMPTS, padding='max_length', max_length=77, return_tensors='pt')
    with torch.no_grad():
        out = scorer.model(pixel_values=torch.as_tensor(np.asarray(pixels)), **tokens)
    reference = out.logits_per_image.diagonal() / 100
    torch.testing.assert_close(scorer(images, PROMPTS), reference, rtol=0, atol=2e-3)


@pytest.mark.parametrize('name', ['chelsea', 'astronaut', 'coffee'])
def test_preprocessing_parity(name: str) -> None:
    """:func:`clip_preprocess` vs ``CLIPImageProcessor`` (PIL) and torchvision (tensors).

    Against torchvision's tensor transforms (same antialiased bicubic kernel) it is exact up to
    float error. Against PIL the bicubic filters differ slightly and PIL rounds to uint8 after
    resizing: measured mean |diff| ~4e-3 and max ~0.22 in normalised units (~1/255 and ~15/255
    in pixels at sharp edges), so the bounds are 1e-2 and 0.3.
    """
    import skimage.data
    import torchvision.transforms.v2 as T
    from PIL import Image
    from transformers import CLIPImageProcessor

    img = getattr(skimage.data, name)()
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    ours = clip_preprocess(x)
    assert ours.shape == (1, 3, 224, 224)
    ref = CLIPImageProcessor()(images=Image.fromarray(img), return_tensors='pt')['pixel_values']
    diff = (ours - torch.as_tensor(np.asarray(ref))).abs()
    assert diff.mean() < 1e-2 and diff.max() < 0.3
    tv = T.Compose([T.Resize(224, T.InterpolationMode.BICUBIC, antialias=True),
                    T.CenterCrop(224), T.Normalize(CLIP_MEAN, CLIP_STD)])(x)
    torch.testing.assert_close(ours, tv, rtol=0, atol=1e-4)


def test_missing_weights_name_the_scorer_and_files(tmp_path, clip_root, monkeypatch) -> None:
    import shutil

    import rtdmd.rewards  # noqa: F401

    with pytest.raises(MissingRewardWeightsError, match='CLIPScore') as err:
        REWARDS.build(dict(type='CLIPScore', root=str(tmp_path)))
    message = str(err.value)
    assert 'config.json' in message and 'openai/clip-vit-large-patch14' in message
    assert isinstance(err.value, FileNotFoundError)
    # A folder without its weight file.
    broken = tmp_path / 'clip-vit-large-patch14'
    shutil.copytree(osp.join(clip_root, 'clip-vit-large-patch14'), broken)
    (broken / 'model.safetensors').unlink()
    with pytest.raises(MissingRewardWeightsError, match='model.safetensors'):
        REWARDS.build(dict(type='CLIPScore', root=str(tmp_path)))
    # The root comes from $RTDMD_REWARD_WEIGHTS when not given.
    monkeypatch.setenv('RTDMD_REWARD_WEIGHTS', clip_root)
    assert REWARDS.build(dict(type='CLIPScore')).path.startswith(clip_root)
