"""The shapes world's rewards: right beats wrong, details per tag, soft-reward gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rtdmd.datasets.shapes import ShapesImageDataset
from rtdmd.datasets.shapes_world import ShapeObject, render
from rtdmd.registry import REWARDS
from rtdmd.rewards.geneval_rules import TAGS, GenEvalMetadataError
from rtdmd.rewards.shapes import ShapesGenEvalReward, ShapesSoftReward, soft_color_mass


@pytest.fixture(scope='module')
def batch() -> tuple[torch.Tensor, list[dict]]:
    ds = ShapesImageDataset(120, split='all', seed=5)
    items = [ds[i] for i in range(120)]
    return torch.stack([it['image'] for it in items]), [it['metadata'] for it in items]


def _image(objects: list[ShapeObject]) -> torch.Tensor:
    return torch.from_numpy(render(objects)).permute(2, 0, 1).float()[None] / 255


def test_both_build_from_the_registry() -> None:
    assert isinstance(REWARDS.build(dict(type='ShapesGenEvalReward')), ShapesGenEvalReward)
    soft = REWARDS.build(dict(type='ShapesSoftReward', temperature=10.0))
    assert soft.differentiable and not ShapesGenEvalReward.differentiable


def test_geneval_reward_is_one_on_the_world_and_lower_on_shuffled_prompts(batch) -> None:
    images, meta = batch
    reward = ShapesGenEvalReward()
    details = reward.score_details(images, None, meta)
    assert torch.equal(details[''], torch.ones(120)) and details['strict_accuracy'].all()
    assert details['clean'].all()
    shuffled = details_wrong = reward.score_details(images.roll(1, 0), None, meta)
    assert details_wrong['strict_accuracy'].mean() < 0.35 and shuffled[''].mean() < 0.7
    tags = [m['tag'] for m in meta]
    for tag in TAGS:
        values = details[f'strict_accuracy/{tag}']
        is_tag = torch.tensor([t == tag for t in tags])
        assert values[~is_tag].isnan().all() and (values[is_tag] == 1).all()
    assert torch.equal(reward(images, None, meta), details[''])


def test_metadata_is_required(batch) -> None:
    images, meta = batch
    with pytest.raises(GenEvalMetadataError, match='one GenEval metadata'):
        ShapesGenEvalReward()(images, None, meta[:3])
    with pytest.raises(GenEvalMetadataError, match='class'):
        ShapesSoftReward()(images[:1], None, [{'tag': 'colors', 'include': [
            {'class': 'cat', 'count': 1}]}])


def test_soft_reward_prefers_the_right_image(batch) -> None:
    images, meta = batch
    soft = ShapesSoftReward()
    right, wrong = soft(images, None, meta), soft(images.roll(1, 0), None, meta)
    assert right.min() > 0.75 and right.max() <= 1.0
    assert (right > wrong).float().mean() > 0.85 and wrong.mean() < right.mean() - 0.3
    # Position: the subject's colour mass on the named side.
    meta_pos = {'tag': 'position', 'include': [
        {'class': 'square', 'count': 1, 'color': 'blue'},
        {'class': 'circle', 'count': 1, 'color': 'red', 'position': ['left of', 0]}]}
    good = _image([ShapeObject('circle', 'red', 2, 12, 10), ShapeObject('square', 'blue', 20, 12,
                                                                        9)])
    bad = _image([ShapeObject('circle', 'red', 20, 12, 10), ShapeObject('square', 'blue', 2, 12,
                                                                        9)])
    assert soft(good, None, [meta_pos]) > soft(bad, None, [meta_pos]) + 0.15


def test_soft_colour_mass_counts_object_area() -> None:
    image = _image([ShapeObject('square', 'green', 4, 4, 10)])
    mass = soft_color_mass(image)[0].sum(dim=(1, 2))
    assert mass[1] == pytest.approx(100, rel=0.02)  # green: the 10 x 10 square
    assert mass[[0, 2, 3, 4]].abs().max() < 2


def test_soft_reward_gradient_matches_finite_differences_and_climbs(batch) -> None:
    images, meta = batch
    soft = ShapesSoftReward()
    # Background pixels sit exactly on the kink of the leaky clamp (projection 0): jitter them
    # off it, so central differences do not straddle a kink.
    jitter = torch.rand(images[:4].shape, generator=torch.Generator().manual_seed(1)) * 0.02
    x = (images[:4].roll(1, 0) - jitter).double().clamp(0, 1).requires_grad_(True)
    r = soft(x, None, meta[:4])
    (grad,) = torch.autograd.grad(r.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    h = 1e-6
    with torch.no_grad():
        numeric = (soft(x + h * direction, None, meta[:4]).sum()
                   - soft(x - h * direction, None, meta[:4]).sum()) / (2 * h)
    assert float((grad * direction).sum()) == pytest.approx(float(numeric), rel=1e-4, abs=1e-8)
    # Gradient ascent raises the reward of every image (a wrong image moves towards its prompt).
    y = x.detach().clone()
    start = soft(y, None, meta[:4])
    for _ in range(30):
        y.requires_grad_(True)
        (g,) = torch.autograd.grad(soft(y, None, meta[:4]).sum(), y)
        with torch.no_grad():
            y = (y + 0.05 * g / g.abs().amax(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)
    assert (soft(y, None, meta[:4]) > start + 0.02).all()


def test_blank_image_still_gets_a_gradient() -> None:
    blank = torch.full((1, 3, 32, 32), 235 / 255, requires_grad=True)
    meta = [{'tag': 'colors', 'include': [{'class': 'circle', 'count': 1, 'color': 'red'}]}]
    (grad,) = torch.autograd.grad(ShapesSoftReward()(blank, None, meta).sum(), blank)
    assert float(grad.abs().sum()) > 0 and not math.isnan(float(grad.sum()))
    assert np.isfinite(grad.numpy()).all()
