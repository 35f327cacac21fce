"""AestheticScore on a tiny random-weight CLIP (768-d projection, as ViT-L/14) and a random MLP.

Both are saved in the real layout (transformers ``save_pretrained`` folder, and a ``.pth`` state
dict with the improved-aesthetic-predictor key names) and read through the scorer's loading path.
"""

from __future__ import annotations

import os.path as osp

import numpy as np
import pytest
import torch
from torch import nn

from rtdmd.registry import REWARDS
from rtdmd.rewards.aesthetic import MLP_FILE
from rtdmd.rewards.weights import MissingRewardWeightsError
from rtdmd.testing.rewards import build_tiny_clip_dir
from tests.test_rewards.test_clip_score import _photos


def _release_mlp() -> nn.Sequential:
    """The MLP exactly as improved-aesthetic-predictor writes it (``self.layers``)."""
    return nn.Sequential(
        nn.Linear(768, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))


@pytest.fixture(scope='module')
def aesthetic_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('rewards'))
    build_tiny_clip_dir(osp.join(root, 'clip-vit-large-patch14'), seed=2, projection_dim=768)
    torch.manual_seed(3)
    mlp = _release_mlp()
    with torch.no_grad():
        mlp[-1].bias.fill_(5.5)  # centre the random head on the release's typical output
    torch.save({f'layers.{k}': v for k, v in mlp.state_dict().items()}, osp.join(root, MLP_FILE))
    return root


@pytest.fixture(scope='module')
def scorer(aesthetic_root):
    import rtdmd.rewards.aesthetic  # noqa: F401  (registers)

    return REWARDS.build(dict(type='AestheticScore', root=aesthetic_root))


def test_shape_determinism_and_batch_invariance(scorer) -> None:
    images = _photos()
    assert not scorer.differentiable and scorer.output_scale
    r = scorer(images, ['', '', ''])
    assert r.shape == (3,) and r.dtype == torch.float32 and torch.isfinite(r).all()
    torch.testing.assert_close(scorer(images), r, rtol=0, atol=0)
    one_by_one = torch.cat([scorer(images[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(one_by_one, r, rtol=1e-5, atol=1e-5)
    assert not r.requires_grad


def test_matches_the_release_recipe(scorer, aesthetic_root) -> None:
    """Release: CLIPProcessor on uint8 PIL -> ``encode_image`` -> L2 norm -> MLP (exact)."""
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPModel

    images = _photos()
    clip = CLIPModel.from_pretrained(osp.join(aesthetic_root, 'clip-vit-large-patch14')).eval()
    mlp = _release_mlp().eval()
    state = torch.load(osp.join(aesthetic_root, MLP_FILE), weights_only=True)
    mlp.load_state_dict({k.removeprefix('layers.'): v for k, v in state.items()})
    uint8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pixels = CLIPImageProcessor()(images=[Image.fromarray(u) for u in uint8],
                                  return_tensors='pt')['pixel_values']
    with torch.no_grad():
        emb = clip.get_image_features(pixel_values=torch.as_tensor(np.asarray(pixels)))
        emb = emb.pooler_output
        reference = mlp(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(scorer(images), reference, rtol=1e-5, atol=1e-5)


def test_missing_or_wrong_weights(tmp_path, aesthetic_root) -> None:
    import shutil

    import rtdmd.rewards.aesthetic  # noqa: F401

    with pytest.raises(MissingRewardWeightsError, match='AestheticScore') as err:
        REWARDS.build(dict(type='AestheticScore', root=str(tmp_path)))
    assert 'clip-vit-large-patch14' in str(err.value)
    shutil.copytree(osp.join(aesthetic_root, 'clip-vit-large-patch14'),
                    tmp_path / 'clip-vit-large-patch14')
    with pytest.raises(MissingRewardWeightsError, match='improved-aesthetic-predictor'):
        REWARDS.build(dict(type='AestheticScore', root=str(tmp_path)))
    # A state dict of the wrong shape (e.g. the ViT-B/32 512-d head) is rejected clearly.
    torch.save({'layers.0.weight': torch.zeros(1024, 512)}, tmp_path / MLP_FILE)
    with pytest.raises(MissingRewardWeightsError, match='768-d CLIP embedding'):
        REWARDS.build(dict(type='AestheticScore', root=str(tmp_path)))
