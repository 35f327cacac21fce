"""Group advantages, multi-reward combination, PPO ratio loss, SubGRPO subsets and shared noise."""

from __future__ import annotations

import hashlib
import math
import random

import numpy as np
import pytest
import torch
from torch import Tensor

from rtdmd.functional.grpo import (
    clipped_ratio_loss,
    combine_advantages,
    finite_rewards,
    group_advantages,
    prompt_noise_seed,
    select_step_subset,
    shared_step_noise,
)


def _grouped_rewards(seed: int, num_groups: int = 6, k: int = 5) -> tuple[torch.Tensor, ...]:
    """Shuffled rewards of ``num_groups`` prompts x ``k`` copies, with non-contiguous group ids."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.arange(num_groups).repeat_interleave(k) * 7 + 3
    perm = torch.randperm(ids.shape[0], generator=gen)
    rewards = torch.randn(ids.shape[0], generator=gen) + ids.float() * 0.1
    return rewards, ids[perm]


def _loop_reference(rewards: torch.Tensor, ids: torch.Tensor, eps: float = 1e-4) -> np.ndarray:
    """The release's per-prompt stat tracker, written as a Python loop over numpy float64."""
    r = rewards.double().numpy()
    g = ids.numpy()
    out = np.zeros_like(r)
    std = np.std(r) + eps  # global, ddof 0
    for gid in np.unique(g):
        mask = g == gid
        out[mask] = (r[mask] - np.mean(r[mask])) / std
    return out


def test_group_advantages_match_loop_reference() -> None:
    rewards, ids = _grouped_rewards(0)
    adv = group_advantages(rewards, ids)
    assert adv.shape == rewards.shape and adv.dtype == torch.float32
    np.testing.assert_allclose(adv.numpy(), _loop_reference(rewards, ids), rtol=1e-6, atol=1e-6)
    # Per-group means vanish.
    for gid in ids.unique():
        assert abs(float(adv[ids == gid].double().mean())) < 1e-6


def test_group_advantages_use_population_std() -> None:
    rewards = torch.tensor([0.0, 2.0, 0.0, 2.0], dtype=torch.float64)
    ids = torch.tensor([0, 0, 1, 1])
    # Centred rewards are +-1 and the ddof-0 std is 1 (ddof 1 would give 2 / sqrt(3)).
    expected = torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64) / (1 + 1e-4)
    torch.testing.assert_close(group_advantages(rewards, ids), expected)
    with pytest.raises(ValueError):
        group_advantages(rewards[None], ids[None])


def _combine_reference(rewards: dict[str, torch.Tensor], weights: dict[str, float],
                       ids: torch.Tensor, eps: float = 1e-4) -> np.ndarray:
    total = sum(weights[k] * _loop_reference(rewards[k], ids, eps) for k in rewards)
    return (total - total.mean()) / (total.std() + eps)


def test_combine_advantages_restandardises_then_clips() -> None:
    r1, ids = _grouped_rewards(1)
    r2 = _grouped_rewards(2)[0] * 20.0  # a reward on a ~20x larger scale (ALGORITHM.md 9.9)
    rewards, weights = {'clip': r1, 'pick': r2}, {'clip': 1.0, 'pick': 0.5}
    unclipped = combine_advantages(rewards, weights, ids, clip=1e9)
    ref = _combine_reference(rewards, weights, ids)
    np.testing.assert_allclose(unclipped.numpy(), ref, rtol=1e-5, atol=1e-6)
    a = unclipped.double()
    assert abs(float(a.mean())) < 1e-6
    assert abs(float(a.std(correction=0)) - 1.0) < 1e-3  # std / (std + eps)
    # Per-reward standardisation first: rescaling one raw reward changes nothing (up to eps).
    exact = combine_advantages(rewards, weights, ids, clip=1e9, eps=0.0)
    rescaled = combine_advantages({'clip': r1, 'pick': r2 / 20.0}, weights, ids, clip=1e9, eps=0.0)
    torch.testing.assert_close(rescaled, exact)
    clipped = combine_advantages(rewards, weights, ids, clip=1.0)
    torch.testing.assert_close(clipped, unclipped.clamp(-1.0, 1.0))
    assert float(clipped.abs().max()) == 1.0


def test_combine_advantages_key_mismatch_raises() -> None:
    r, ids = _grouped_rewards(3)
    with pytest.raises(ValueError, match='hpsv2'):
        combine_advantages({'clip': r}, {'clip': 1.0, 'hpsv2': 1.0}, ids)
    with pytest.raises(ValueError, match='geneval'):
        combine_advantages({'clip': r, 'geneval': r}, {'clip': 1.0}, ids)
    with pytest.raises(ValueError):
        combine_advantages({}, {}, ids)


def _ppo_reference(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, lo: float,
                   hi: float) -> tuple[float, list[float]]:
    """Hand-written PPO: per-sample value and d(loss)/d(logp) from the active branch."""
    n = logp.shape[0]
    value, grads = 0.0, []
    for lp, o, a in zip(logp.tolist(), old.tolist(), adv.tolist(), strict=True):
        r = math.exp(lp - o)
        r_clip = min(max(r, 1 - lo), 1 + hi)
        value += max(-a * r, -a * r_clip) / n
        # The clipped branch is a constant (zero gradient) exactly when it is the larger one and
        # the ratio has left the range: A > 0 with r > 1 + hi, or A < 0 with r < 1 - lo.
        frozen = (a > 0 and r > 1 + hi) or (a < 0 and r < 1 - lo)
        grads.append(0.0 if frozen else -a * r / n)
    return value, grads


def test_ratio_loss_at_ratio_one_is_reinforce() -> None:
    gen = torch.Generator().manual_seed(4)
    adv = torch.randn(16, generator=gen)
    old = -torch.rand(16, generator=gen)
    logp = old.clone().requires_grad_(True)
    loss = clipped_ratio_loss(logp, old, adv)
    torch.testing.assert_close(loss, -adv.mean())
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv / 16)


@pytest.mark.parametrize('lo,hi,spread', [(0.2, 0.3, 0.6), (1e-5, 1e-5, 1e-3)])
def test_ratio_loss_clipping_matches_ppo_reference(lo: float, hi: float, spread: float) -> None:
    gen = torch.Generator().manual_seed(5)
    n = 64
    adv = torch.randn(n, generator=gen, dtype=torch.float64)
    old = -torch.rand(n, generator=gen, dtype=torch.float64)
    logp = (old + spread * (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1))
    logp.requires_grad_(True)
    loss = clipped_ratio_loss(logp, old, adv, clip_low=lo, clip_high=hi)
    loss.backward()
    value, grads = _ppo_reference(logp.detach(), old, adv, lo, hi)
    assert float(loss.detach()) == pytest.approx(value, rel=1e-12, abs=1e-15)
    torch.testing.assert_close(logp.grad, torch.tensor(grads, dtype=torch.float64))
    ratio = torch.exp(logp.detach() - old)
    frozen = ((adv > 0) & (ratio > 1 + hi)) | ((adv < 0) & (ratio < 1 - lo))
    moved_against = ((adv > 0) & (ratio < 1 - lo)) | ((adv < 0) & (ratio > 1 + hi))
    assert int(frozen.sum()) > 5 and int(moved_against.sum()) > 5  # both cases exercised
    assert bool((logp.grad[frozen] == 0).all()) and bool((logp.grad[moved_against] != 0).all())


def test_ratio_loss_treats_old_log_prob_and_advantages_as_constants() -> None:
    logp = torch.zeros(3, requires_grad=True)
    old = torch.zeros(3, requires_grad=True)
    adv = torch.ones(3, requires_grad=True)
    clipped_ratio_loss(logp, old, adv).backward()
    assert old.grad is None and adv.grad is None


def test_step_subset_reproducible_sorted_in_range() -> None:
    for epoch in range(20):
        subset = select_step_subset(0, 2, 2, seed=42, epoch=epoch)
        assert subset == sorted(subset) and len(set(subset)) == 2
        assert all(0 <= j <= 2 for j in subset)
        assert subset == select_step_subset(0, 2, 2, seed=42, epoch=epoch)
        # The release's expression, written out independently (range_end inclusive).
        expected = sorted(random.Random(42 + epoch * 100000 + 104729).sample([0, 1, 2], 2))
        assert subset == expected
    assert select_step_subset(3, 7, 5, seed=0, epoch=0) == [3, 4, 5, 6, 7]
    for bad in (0, 4):
        with pytest.raises(ValueError):
            select_step_subset(0, 2, bad, seed=0, epoch=0)
    with pytest.raises(ValueError):
        select_step_subset(2, 1, 1, seed=0, epoch=0)


def test_step_subsets_are_equally_likely() -> None:
    epochs = 3000
    counts: dict[tuple[int, ...], int] = {}
    for epoch in range(epochs):
        key = tuple(select_step_subset(0, 2, 2, seed=7, epoch=epoch))
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) == {(0, 1), (0, 2), (1, 2)}
    expected = epochs / 3
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 13.8  # chi-square, 2 dof, p = 0.001


def test_prompt_noise_seed_formula() -> None:
    prompt = 'a photo of a cat and a dog'
    head = int(hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:8], 16)  # big-endian
    assert prompt_noise_seed(prompt, 0, 0) == head % 2**31
    assert prompt_noise_seed(prompt, 2, 5) == (head + 2 * 10007 + 5 * 100000) % 2**31
    big = prompt_noise_seed(prompt, 1, 10**6)
    assert 0 <= big < 2**31
    assert prompt_noise_seed('ü', 0, 0) == int(hashlib.sha256('ü'.encode()).hexdigest()[:8],
                                               16) % 2**31


def test_shared_noise_is_prompt_deterministic() -> None:
    shape = (4, 8, 8)
    prompts = ['a red cube', 'two dogs', 'a red cube', 'a red cube']
    state = torch.random.get_rng_state()
    noise = shared_step_noise(prompts, step_index=1, epoch=3, shape_per_sample=shape)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert noise.shape == (4, *shape) and noise.dtype == torch.float32
    assert torch.equal(noise[0], noise[2]) and torch.equal(noise[0], noise[3])
    assert not torch.allclose(noise[0], noise[1])
    # Position and batch composition do not matter (copies sit on different ranks).
    alone = shared_step_noise(['a red cube'], 1, 3, shape)
    assert torch.equal(alone[0], noise[0])
    # The value is the seeded CPU generator's draw.
    gen = torch.Generator().manual_seed(prompt_noise_seed('two dogs', 1, 3))
    assert torch.equal(noise[1], torch.randn(shape, generator=gen))
    # A different step or epoch gives different noise.
    assert not torch.allclose(shared_step_noise(['a red cube'], 2, 3, shape)[0], noise[0])
    assert not torch.allclose(shared_step_noise(['a red cube'], 1, 4, shape)[0], noise[0])
    half = shared_step_noise(prompts, 1, 3, shape, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half, noise.bfloat16())
    assert shared_step_noise([], 1, 3, shape).shape == (0, *shape)


def test_shared_noise_is_standard_normal() -> None:
    prompts = [f'prompt number {i}' for i in range(64)]
    noise = shared_step_noise(prompts, 0, 0, (16, 16)).double().flatten()
    n = noise.numel()
    assert abs(float(noise.mean())) < 5 / math.sqrt(n)
    assert abs(float(noise.var()) - 1.0) < 5 * math.sqrt(2 / n)
    q = torch.tensor([0.025, 0.16, 0.5, 0.84, 0.975], dtype=torch.float64)
    torch.testing.assert_close(torch.quantile(noise, q),
                               torch.tensor([-1.96, -0.994, 0.0, 0.994, 1.96],
                                            dtype=torch.float64), rtol=0, atol=0.04)


def _two_rewards(n_groups: int = 4, k: int = 6, seed: int = 0) -> tuple[dict, dict, Tensor]:
    g = torch.Generator().manual_seed(seed)
    rewards = {'a': torch.randn(n_groups * k, generator=g, dtype=torch.float64),
               'b': 20 * torch.rand(n_groups * k, generator=g, dtype=torch.float64)}
    return rewards, {'a': 1.0, 'b': 0.5}, torch.arange(n_groups).repeat_interleave(k)


def finite_combine_advantages(rewards, weights, groups, **kwargs):
    valid = finite_rewards(rewards)
    return combine_advantages(rewards, weights, groups, valid=valid, **kwargs), valid


def test_finite_combine_advantages_equals_combine_advantages_when_all_finite() -> None:
    rewards, weights, groups = _two_rewards()
    adv, valid = finite_combine_advantages(rewards, weights, groups, clip=1.5)
    assert bool(valid.all())
    torch.testing.assert_close(adv, combine_advantages(rewards, weights, groups, clip=1.5),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_a_non_finite_reward_drops_its_sample_from_every_statistic(bad: float) -> None:
    """Equals combine_advantages computed on the finite samples only (an independent path)."""
    rewards, weights, groups = _two_rewards()
    rewards['a'][3] = bad
    rewards['b'][10] = bad
    adv, valid = finite_combine_advantages(rewards, weights, groups)
    keep = torch.ones_like(valid)
    keep[[3, 10]] = False
    assert torch.equal(valid, keep) and int((~valid).sum()) == 2
    assert torch.isfinite(adv).all() and float(adv[3]) == 0.0 and float(adv[10]) == 0.0
    subset = combine_advantages({n: r[keep] for n, r in rewards.items()}, weights, groups[keep])
    torch.testing.assert_close(adv[keep], subset, rtol=1e-12, atol=1e-12)


def test_all_rewards_non_finite_gives_zero_advantages() -> None:
    rewards, weights, groups = _two_rewards(n_groups=1, k=4)
    rewards['a'][:] = float('nan')
    adv, valid = finite_combine_advantages(rewards, weights, groups)
    assert not bool(valid.any()) and torch.equal(adv, torch.zeros_like(adv))
