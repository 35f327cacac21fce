"""The seeded world family: a pure function of the seed, inside its documented ranges, and every
world builds the teacher, the reward and the exact tilted family the evaluation needs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtdmd.evaluation.tilted import TiltedSampler
from rtdmd.evaluation.worlds import BETA_GRID_MAX, REWARD_KINDS, WorldFamily, draw_world
from rtdmd.models.backbones.gaussian_mixture import GaussianMixtureTeacher
from rtdmd.registry import REWARDS
from rtdmd.utils.setup_env import register_all_modules

SEEDS = range(30)


def test_a_world_is_a_pure_function_of_its_seed() -> None:
    assert draw_world(7) == draw_world(7)
    assert draw_world(7).world != draw_world(8).world
    with pytest.raises(ValueError, match='non-negative'):
        draw_world(-1)


@pytest.mark.parametrize('seed', SEEDS)
def test_worlds_stay_inside_the_documented_ranges(seed: int) -> None:
    fam, spec = WorldFamily(), draw_world(seed)
    means, stds = np.array(spec.world['means']), np.array(spec.world['stds'])
    weights = np.array(spec.world['class_weights'])
    assert spec.dim in fam.dims and means.shape == (spec.num_components, spec.dim)
    assert fam.components[0] <= spec.num_components <= fam.components[1]
    assert fam.classes[0] <= spec.num_classes <= fam.classes[1]
    assert ((stds >= fam.std_range[0] - 1e-4) & (stds <= fam.std_range[1] + 1e-4)).all()
    assert np.allclose(weights.sum(1), 1.0, atol=1e-3)
    assert (weights >= fam.weight_floor / spec.num_components - 1e-4).all()
    gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)
    need = fam.separation * np.maximum(stds[:, None], stds[None])
    off_diag = ~np.eye(len(stds), dtype=bool)
    assert (gaps[off_diag] >= need[off_diag] - 1e-3).all()  # modes are distinct
    assert spec.kind == REWARD_KINDS[seed % 3]
    assert spec.beta_grid_max == BETA_GRID_MAX[spec.kind]


def test_seeds_cover_dimensions_kinds_and_quadratic_peaks() -> None:
    specs = [draw_world(s) for s in SEEDS]
    assert {s.dim for s in specs} == {2, 3, 4}
    assert {s.peak for s in specs if s.kind == 'quadratic'} == {'mode', 'between', 'anywhere'}
    assert len({s.num_components for s in specs}) >= 5
    assert {s.num_classes for s in specs} == {2, 3}


def test_quadratic_peaks_lie_where_they_say() -> None:
    for seed in SEEDS:
        spec = draw_world(seed)
        if spec.kind != 'quadratic':
            continue
        means, center = np.array(spec.world['means']), np.array(spec.reward['center'])
        dist = np.linalg.norm(means - center, axis=1)
        if spec.peak == 'mode':
            assert dist.min() < 1e-3
        elif spec.peak == 'between':  # the midpoint of a mode and its nearest neighbour
            i, j = np.argsort(dist)[:2]
            assert abs(dist[i] - dist[j]) < 1e-3
            assert np.allclose(center, 0.5 * (means[i] + means[j]), atol=1e-3)
            # low density there: farther than 2 std from both modes
            assert dist[i] >= 2 * max(spec.world['stds'][i], spec.world['stds'][j])
        else:
            assert np.linalg.norm(center) <= np.linalg.norm(means, axis=1).max() + 1e-3


@pytest.mark.parametrize('seed', [0, 1, 2, 6, 7])
def test_every_world_builds_its_teacher_reward_and_tilted_family(seed: int) -> None:
    register_all_modules()
    spec = draw_world(seed)
    teacher = GaussianMixtureTeacher.from_world(spec.world)
    cfg = dict(spec.reward)
    if cfg.get('means') == '${world.means}':  # resolved by the config loader in a real run
        cfg['means'] = spec.world['means']
    reward = REWARDS.build(cfg)
    x = teacher.sample(torch.zeros(64, dtype=torch.long), torch.Generator().manual_seed(0))
    assert reward(x).shape == (64,) and torch.isfinite(reward(x)).all()
    sampler = TiltedSampler(teacher, reward, 0, 256, spec.beta_grid_max,
                            torch.Generator().manual_seed(1))
    tilted = sampler.sample(0.5 * spec.beta_grid_max)
    assert tilted.shape == (256, spec.dim)
    # the tilt raises the mean reward (exact samples at beta = 0 vs half the bound)
    assert reward(tilted.float()).mean() > reward(sampler.sample(0.0).float()).mean()
