"""The exact reward-tilted family: closed forms against independent computations.

Exactness checks run in float64 on the closed-form parameters; Monte Carlo checks use fixed
generators and tolerances stated in standard errors, so they would hold for other seeds too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from rtdmd.evaluation.tilted import (
    TiltedSampler,
    exact_mean_reward,
    sample_tilted,
    tilt_parameters,
    tilted_mixture,
)
from rtdmd.models.backbones.gaussian_mixture import GaussianMixtureTeacher
from rtdmd.rewards.base import RewardScorer
from rtdmd.rewards.toy import LinearReward, ModeReward, QuadraticReward

WORLD_3D = dict(means=[[1.0, 0.0, -1.0], [-1.5, 0.5, 0.0], [0.0, 2.0, 1.0]],
                stds=[0.3, 0.6, 0.45], class_weights=[[0.5, 0.3, 0.2], [0.1, 0.0, 0.9]])


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small tensors: intra-op threads only add wake-up latency on a loaded CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rewards(dim: int) -> list[torch.nn.Module]:
    return [LinearReward([0.8, -0.5, 0.3][:dim]), QuadraticReward([0.5, 1.0, -0.2][:dim])]


def _log_mixture(means: torch.Tensor, stds: torch.Tensor, log_w: torch.Tensor,
                 x: torch.Tensor) -> torch.Tensor:
    """Independent float64 log-density of ``sum_k w_k N(mu_k, s_k^2 I)``."""
    var = stds.pow(2)
    sq = (x[:, None, :] - means[None]).pow(2).sum(-1)
    log_n = -0.5 * (sq / var + x.shape[1] * torch.log(2 * math.pi * var))
    return torch.logsumexp(log_w + log_n, dim=1)


def _teacher_params(teacher: GaussianMixtureTeacher) -> tuple[torch.Tensor, ...]:
    return teacher.means.double(), teacher.stds.double(), torch.log(teacher.weights.double())


@pytest.mark.parametrize('world_name', ['tiny', '3d'])
@pytest.mark.parametrize('beta', [1e-9, 1e-4, 0.3, 2.5])
def test_tilted_density_ratio_is_exp_beta_r(world_name: str, beta: float,
                                            tiny_world: dict) -> None:
    """``log p_beta - log p - beta r`` is one constant per row, every row (empty prompt too)."""
    teacher = GaussianMixtureTeacher.from_world(tiny_world if world_name == 'tiny' else WORLD_3D)
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(500, teacher.dim, generator=gen, dtype=torch.float64)
    means, stds, log_w = _teacher_params(teacher)
    for reward in _rewards(teacher.dim):
        t_means, t_stds, t_log_w = tilt_parameters(teacher, reward, beta)
        r = x @ reward.direction.double() if isinstance(reward, LinearReward) else \
            -(x - reward.center.double()).pow(2).sum(1)
        for row in range(teacher.num_classes + 1):
            gap = (_log_mixture(t_means, t_stds, t_log_w[row], x)
                   - _log_mixture(means, stds, log_w[row], x) - beta * r)
            assert float(gap.max() - gap.min()) < 1e-9, (type(reward).__name__, row)
        assert torch.allclose(t_log_w.exp().sum(1), torch.ones(3, dtype=torch.float64))


def test_tilted_mixture_module_and_empty_prompt_row(tiny_world: dict) -> None:
    teacher = GaussianMixtureTeacher.from_world(tiny_world)
    x = 2 * torch.randn(300, 2, generator=torch.Generator().manual_seed(1))
    for reward in _rewards(2):
        tilted = tilted_mixture(teacher, reward, 0.7)
        assert tilted.weights.shape == teacher.weights.shape
        for row in range(3):  # row 2 is the empty prompt: the tilt of the teacher's row 2
            cls = torch.full((300,), row)
            gap = (tilted.log_prob(x, 0.0, cls) - teacher.log_prob(x, 0.0, cls)
                   - 0.7 * reward(x).double())
            assert float(gap.max() - gap.min()) < 1e-4  # float32 buffers


def test_beta_zero_is_the_teacher_and_no_closed_form_is_none(tiny_world: dict) -> None:
    teacher = GaussianMixtureTeacher.from_world(tiny_world)
    mode = ModeReward([1.0, 0.0, 0.5], tiny_world['means'])
    for reward in [*_rewards(2), mode, None]:
        same = tilted_mixture(teacher, reward, 0.0)
        for name in ('means', 'stds', 'weights'):
            assert torch.allclose(getattr(same, name), getattr(teacher, name), atol=1e-7)
    assert tilted_mixture(teacher, mode, 0.5) is None
    assert tilt_parameters(teacher, mode, 0.5) is None


def _importance_moments(teacher: GaussianMixtureTeacher, reward: torch.nn.Module, beta: float,
                        c: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-normalised IS estimates of E_beta[f] and their standard errors, f = (x, x^2)."""
    x = teacher.sample(torch.full((n,), c), torch.Generator().manual_seed(2)).double()
    logw = beta * reward(x).double()
    w = torch.softmax(logw, dim=0)
    f = torch.cat([x, x.pow(2)], dim=1)
    est = (w[:, None] * f).sum(0)
    se = ((w[:, None] * (f - est)).pow(2).sum(0)).sqrt()
    return est, se


@pytest.mark.parametrize('reward_idx', [0, 1])
def test_closed_form_moments_match_importance_weights(reward_idx: int, tiny_world: dict) -> None:
    teacher = GaussianMixtureTeacher.from_world(tiny_world)
    reward, beta = _rewards(2)[reward_idx], 0.6
    means, stds, log_w = tilt_parameters(teacher, reward, beta)
    for c in range(2):
        w = log_w[c].exp()
        exact = torch.cat([(w[:, None] * means).sum(0),
                           (w[:, None] * (means.pow(2) + stds.pow(2)[:, None])).sum(0)])
        est, se = _importance_moments(teacher, reward, beta, c, 100_000)
        assert torch.all((est - exact).abs() < 5 * se + 1e-3), (est, exact, se)
        # and exact samples of the closed form agree with the closed-form moments
        x = sample_tilted(teacher, reward, beta, torch.full((50_000,), c),
                          torch.Generator().manual_seed(3)).double()
        f = torch.cat([x, x.pow(2)], dim=1)
        assert torch.all((f.mean(0) - exact).abs() < 5 * f.std(0) / math.sqrt(5e4))


def test_rejection_sampler_matches_importance_weighted_mode_frequencies(tiny_world: dict) -> None:
    teacher = GaussianMixtureTeacher.from_world(tiny_world)
    reward, beta, n = ModeReward([1.0, 0.0, 0.5], tiny_world['means']), 2.0, 20_000
    for c in range(2):
        x = sample_tilted(teacher, reward, beta, torch.full((n,), c),
                          torch.Generator().manual_seed(4))
        freq = torch.bincount(torch.cdist(x, reward.means).argmin(1), minlength=3).double() / n
        prop = teacher.sample(torch.full((100_000,), c), torch.Generator().manual_seed(5))
        w = torch.softmax(beta * reward(prop).double(), dim=0)
        target = torch.zeros(3, dtype=torch.float64).index_add_(
            0, torch.cdist(prop, reward.means).argmin(1), w)
        se = (target * (1 - target) / n).sqrt()
        assert torch.all((freq - target).abs() < 5 * se + 5e-3), (freq, target)


def test_exact_mean_reward_closed_form_and_monte_carlo(tiny_world: dict) -> None:
    teacher = GaussianMixtureTeacher.from_world(tiny_world)
    for reward in _rewards(2):
        exact = exact_mean_reward(teacher, reward, 0.4, 1)
        r = reward(sample_tilted(teacher, reward, 0.4, torch.full((100_000,), 1),
                                 torch.Generator().manual_seed(6))).double()
        assert abs(exact - float(r.mean())) < 5 * float(r.std()) / math.sqrt(1e5)
    mode = ModeReward([1.0, 0.0, 0.5], tiny_world['means'])
    prop = teacher.sample(torch.full((100_000,), 0), torch.Generator().manual_seed(7))
    r = mode(prop).double()
    is_mean = float((torch.softmax(1.5 * r, dim=0) * r).sum())
    mc = exact_mean_reward(teacher, mode, 1.5, 0, n=50_000,
                           generator=torch.Generator().manual_seed(8))
    assert abs(mc - is_mean) < 0.01


def test_common_random_numbers_and_bounds(tiny_world: dict) -> None:
    teacher = GaussianMixtureTeacher.from_world(tiny_world)
    mode = ModeReward([1.0, 0.0, 0.5], tiny_world['means'])
    for reward in (LinearReward([1.0, 0.0]), mode):
        sampler = TiltedSampler(teacher, reward, 0, 512, 3.0, torch.Generator().manual_seed(9))
        assert torch.equal(sampler.sample(1.0), sampler.sample(1.0))
        assert sampler.sample(3.0).shape == (512, 2) and sampler.sample(0.0).shape == (512, 2)
        with pytest.raises(ValueError, match='outside'):
            sampler.sample(3.5)

    class Unbounded(RewardScorer):
        def forward(self, samples, prompts=None, metadata=None):  # noqa: ANN001, ANN201
            return samples.sum(1)

    with pytest.raises(ValueError, match='upper bound'):
        sample_tilted(teacher, Unbounded(), 0.5, torch.zeros(8, dtype=torch.long))
    bounded = Unbounded()
    bounded.upper_bound = 100.0  # a declared bound makes rejection sampling possible (if slow)
    x = sample_tilted(teacher, bounded, 1e-3, torch.zeros(8, dtype=torch.long))
    assert x.shape == (8, 2) and x.dtype == torch.float32
