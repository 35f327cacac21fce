"""HPSv2: a tiny random-weight open_clip ViT saved as an HPS checkpoint, loaded via the scorer."""

from __future__ import annotations

import pytest
import torch

from rtdmd.registry import REWARDS

open_clip = pytest.importorskip('open_clip')

from rtdmd.testing.rewards import (  # noqa: E402
    TINY,
    build_tiny_hps_v2,
    register_tiny_hps_architecture,
)

PROMPTS = ['a photo of a cat', 'an astronaut', 'a cup of coffee']


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    import rtdmd.rewards  # noqa: F401  (registers)

    register_tiny_hps_architecture(str(tmp_path_factory.mktemp('open_clip_cfg')))
    root = tmp_path_factory.mktemp('rewards')
    build_tiny_hps_v2(str(root / 'HPS_v2.1_compressed.pt'))  # {'state_dict': ...}, as released
    return root


@pytest.fixture(scope='module')
def reward(root):
    return REWARDS.build(dict(type='HPSv2', root=str(root), model_name=TINY))


def _images(b: int = 3) -> torch.Tensor:
    return torch.rand(b, 3, 64, 96, generator=torch.Generator().manual_seed(1))


def test_score_is_the_normalised_feature_dot_product(root, reward) -> None:
    images = _images()
    r = reward(images, PROMPTS)
    assert r.shape == (3,) and r.dtype == torch.float32
    assert (r.abs() <= 1 + 1e-5).all()
    torch.testing.assert_close(reward(images, PROMPTS), r)  # deterministic
    # reference: the release's scoring on the same model loaded independently
    from rtdmd.rewards.hps_v2 import hps_preprocess

    model = open_clip.create_model(TINY, pretrained=None, output_dict=True).eval()
    model.load_state_dict(torch.load(root / 'HPS_v2.1_compressed.pt')['state_dict'])
    tokenizer = open_clip.get_tokenizer(TINY)
    with torch.no_grad():
        out = model(hps_preprocess(images), tokenizer(PROMPTS))
    ref = torch.diagonal(out['image_features'] @ out['text_features'].T)
    torch.testing.assert_close(r, ref, atol=1e-5, rtol=1e-5)


def test_batch_size_invariance(reward) -> None:
    images = _images()
    batch = reward(images, PROMPTS)
    single = torch.cat([reward(images[i:i + 1], PROMPTS[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)


def test_gradient_flows_to_the_image(reward) -> None:
    assert reward.differentiable
    images = _images(2).requires_grad_(True)
    reward(images, PROMPTS[:2]).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.model.parameters())


def _resize_max_size_reference(pil, size: int = 224):
    """hpsv2's ResizeMaxSize(224) + ToTensor + Normalize, verbatim on PIL (torchvision)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    from rtdmd.rewards.preprocess import CLIP_MEAN, CLIP_STD

    width, height = pil.size
    scale = size / float(max(height, width))
    new_size = tuple(round(dim * scale) for dim in (height, width))
    img = TF.resize(pil, new_size, InterpolationMode.BICUBIC)
    pad_h, pad_w = size - new_size[0], size - new_size[1]
    img = TF.pad(img, padding=[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2],
                 fill=0)
    return TF.normalize(TF.to_tensor(img), CLIP_MEAN, CLIP_STD)


@pytest.mark.parametrize('photo', ['chelsea', 'astronaut'])
def test_preprocessing_matches_the_release_on_pil(photo) -> None:
    data = pytest.importorskip('skimage.data')
    from PIL import Image

    from rtdmd.rewards.hps_v2 import hps_preprocess

    array = getattr(data, photo)()
    ref = _resize_max_size_reference(Image.fromarray(array))
    ours = hps_preprocess(torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255)[0]
    assert ours.shape == ref.shape == (3, 224, 224)
    # PIL resamples uint8 (fixed-point filter weights, rounding to 1/255); torch's antialiased
    # bicubic runs in float. Measured on chelsea / astronaut / coffee / rocket: mean |diff|
    # 0.0026-0.0037 (< 1/255 of a level after the ~0.27 std), max 0.015-0.071 on the sharpest
    # edges (a few levels). The zero padding is identical.
    diff = (ours - ref).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.15
    if array.shape[0] != array.shape[1]:  # chelsea: 300 x 451 -> 149 x 224, 75 rows of padding
        torch.testing.assert_close(ours[:, :37], ref[:, :37])


def test_missing_or_wrong_checkpoint(tmp_path, root) -> None:
    from rtdmd.rewards.weights import MissingRewardWeightsError

    with pytest.raises(MissingRewardWeightsError,
                       match='(?s)HPSv2.*HPS_v2.1_compressed.pt.*xswu/HPSv2'):
        REWARDS.build(dict(type='HPSv2', root=str(tmp_path), model_name=TINY))
    torch.save({'state_dict': {'visual.foo': torch.zeros(1)}}, tmp_path / 'HPS_v2.1_compressed.pt')
    with pytest.raises(ValueError, match='not an open_clip'):
        REWARDS.build(dict(type='HPSv2', root=str(tmp_path), model_name=TINY))
    reward = REWARDS.build(dict(type='HPSv2', root=str(root), model_name=TINY))
    with pytest.raises(ValueError, match='one text prompt per image'):
        reward(_images(2), ['only one'])
