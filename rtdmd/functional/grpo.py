"""GRPO pieces of stage 2: group advantages, the clipped ratio loss, SubGRPO subsets, shared noise.

ALGORITHM.md 4.3, 4.4, 4.6 and 9.5-9.9. Advantages are standardised per reward with a per-prompt
(group) mean and a *global* std, summed with the reward weights, re-standardised globally and
clipped. The policy loss is the PPO clipped surrogate on the CPS log-prob surrogate. SubGRPO
trains a seeded subset of the stochastic steps per epoch; the other stochastic steps use
prompt-seeded noise, shared by all copies of a prompt on every rank.

Two functions here are deterministic in their seeds by design (:func:`select_step_subset`,
:func:`shared_step_noise`): every rank must reach the same answer without a collective.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

AllReduce = Callable[[Tensor], Tensor]


def _out_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def global_moments(x: Tensor, valid: Tensor, all_reduce: AllReduce | None = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """``(count, mean, population std)`` of ``x[valid]`` over every process (float64).

    The sums ``(n, sum x, sum x^2)`` are reduced with ``all_reduce`` (a sum over ranks;
    ``None`` on one process), so N processes get exactly the statistics of one process holding
    their union. The std is the population one (ddof 0, the release's ``np.std``).
    """
    x = torch.where(valid, x.to(torch.float64), 0.0)
    stats = torch.stack([valid.to(torch.float64).sum(), x.sum(), x.square().sum()])
    if all_reduce is not None:
        stats = all_reduce(stats)
    n, s1, s2 = stats.unbind()
    mean = s1 / n.clamp(min=1)
    var = (s2 / n.clamp(min=1) - mean.square()).clamp(min=0)
    return n, mean, var.sqrt()


def group_advantages(rewards: Tensor, group_ids: Tensor, eps: float = 1e-4,
                     valid: Tensor | None = None, all_reduce: AllReduce | None = None
                     ) -> Tensor:
    """Per-group-mean, global-std advantages of one reward (``per_prompt_global_std: true``).

    ``A_i = (r_i - mean_{j: g_j = g_i} r_j) / (std_{all j} r_j + eps)``, where the std is the
    population std (ddof 0, like the release's ``np.std``) over every valid sample of every
    process (``all_reduce``), and the group mean over the valid members of the group (a group
    lives on one process). Statistics are taken in float64. ``group_ids`` may be any integers.
    Invalid samples (``valid`` False, e.g. a non-finite reward) get 0.

    Args:
        rewards: ``(N,)`` rewards of this process's samples.
        group_ids: ``(N,)`` long, equal for the K copies of one prompt.
        eps: added to the std.
        valid: ``(N,)`` bool, default all.
        all_reduce: sums a tensor over processes (``None``: one process).

    Returns:
        ``(N,)`` advantages in the dtype of ``rewards`` (default float dtype for integer rewards).
    """
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f'rewards and group_ids must both be (N,), got {tuple(rewards.shape)} '
                         f'and {tuple(group_ids.shape)}')
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid
    r = torch.where(valid, rewards.to(torch.float64), 0.0)
    _, inverse, _ = torch.unique(group_ids, return_inverse=True, return_counts=True)
    groups = int(inverse.max()) + 1 if inverse.numel() else 0
    sums = torch.zeros(groups, dtype=r.dtype, device=r.device).index_add_(0, inverse, r)
    counts = torch.zeros(groups, dtype=r.dtype, device=r.device).index_add_(
        0, inverse, valid.to(r.dtype))
    group_mean = (sums / counts.clamp(min=1))[inverse]
    _, _, std = global_moments(rewards, valid, all_reduce)
    adv = torch.where(valid, (r - group_mean) / (std + eps), 0.0)
    return adv.to(_out_dtype(rewards))


def combine_advantages(rewards: Mapping[str, Tensor], weights: Mapping[str, float],
                       group_ids: Tensor, clip: float = 5.0, eps: float = 1e-4,
                       valid: Tensor | None = None, all_reduce: AllReduce | None = None
                       ) -> Tensor:
    """Multi-reward advantages (``weight_advantages: true``), ALGORITHM.md 4.4 and 9.9.

    ``A = sum_r w_r A_r`` with ``A_r = group_advantages(r)``; then the global re-standardisation
    ``A <- (A - mean A) / (std A + eps)`` (population std, ddof 0, over every valid sample of
    every process) and ``A <- clamp(A, -clip, clip)``. Standardising each reward first matters:
    raw reward scales differ by ~20x. Invalid samples get 0 (no policy gradient).

    Args:
        rewards: name -> ``(N,)`` rewards.
        weights: name -> weight; must have exactly the keys of ``rewards``.
        group_ids: ``(N,)`` long group (prompt) ids.
        clip: bound of the final clamp (``adv_clip_max``).
        eps: added to every std.
        valid: ``(N,)`` bool, default all.
        all_reduce: sums a tensor over processes (``None``: one process).

    Returns:
        ``(N,)`` advantages (float dtype of the first reward).

    Raises:
        ValueError: when a weight has no reward or a reward has no weight (names the keys), or
            when ``rewards`` is empty.
    """
    missing_reward = sorted(set(weights) - set(rewards))
    missing_weight = sorted(set(rewards) - set(weights))
    if missing_reward or missing_weight:
        raise ValueError(f'reward/weight keys differ: weights without a reward {missing_reward}, '
                         f'rewards without a weight {missing_weight}')
    if not rewards:
        raise ValueError('combine_advantages needs at least one reward')
    first = next(iter(rewards.values()))
    valid = torch.ones_like(first, dtype=torch.bool) if valid is None else valid
    total = None
    for name, reward in rewards.items():
        term = float(weights[name]) * group_advantages(reward, group_ids, eps, valid,
                                                       all_reduce).to(torch.float64)
        total = term if total is None else total + term
    _, mean, std = global_moments(total, valid, all_reduce)
    total = torch.where(valid, (total - mean) / (std + eps), 0.0)
    return total.clamp(-clip, clip).to(_out_dtype(first))


def finite_rewards(rewards: Mapping[str, Tensor]) -> Tensor:
    """``(N,)`` True where every reward of the sample is finite."""
    return torch.stack([torch.isfinite(r) for r in rewards.values()]).all(dim=0)


def clipped_ratio_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor,
                       clip_low: float = 1e-5, clip_high: float = 1e-5) -> Tensor:
    """PPO clipped surrogate on one denoising step, ALGORITHM.md 4.6.

    ``rho = exp(logp - logp_old)``;
    ``L = mean_b max(-A_b rho_b, -A_b clip(rho_b, 1 - clip_low, 1 + clip_high))``.
    ``old_log_prob`` and ``advantages`` are constants (detached). With one inner epoch the ratio
    is 1, ``L = -mean(A)`` and ``dL/dlogp_b = -A_b / B``: REINFORCE. Samples whose ratio has left
    the range in the direction the advantage favours get zero gradient. The tiny 1e-5 range only
    makes sense on the unnormalised CPS log-prob surrogate (ALGORITHM.md 9.5, 9.6). Float32.

    Args:
        log_prob: ``(B,)`` log-prob under the current policy, with grad.
        old_log_prob: ``(B,)`` log-prob recorded at sampling time.
        advantages: ``(B,)`` clipped advantages.
        clip_low: lower ratio clip ``1 - clip_low``.
        clip_high: upper ratio clip ``1 + clip_high``.

    Returns:
        Scalar loss.
    """
    work = torch.float64 if log_prob.dtype == torch.float64 else torch.float32
    adv = advantages.detach().to(work)
    ratio = torch.exp(log_prob.to(work) - old_log_prob.detach().to(work))
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped).mean()


def select_step_subset(range_start: int, range_end: int, num_train_steps: int, seed: int,
                       epoch: int) -> list[int]:
    """SubGRPO: the stochastic steps trained this epoch, ALGORITHM.md 4.3.

    ``sorted(Random(seed + epoch * 100000 + 104729).sample(range(range_start, range_end + 1),
    num_train_steps))``: ``range_end`` is inclusive, as in the release. A local seeded RNG makes
    the subset identical on all ranks with no collective; all subsets are equally likely.

    Args:
        range_start: first eligible step index.
        range_end: last eligible step index (inclusive).
        num_train_steps: subset size, in ``1..range_end - range_start + 1``.
        seed: experiment seed.
        epoch: current epoch.

    Returns:
        Sorted list of ``num_train_steps`` distinct step indices.
    """
    population = range(range_start, range_end + 1)
    if len(population) == 0:
        raise ValueError(f'empty step range [{range_start}, {range_end}]')
    if not 1 <= num_train_steps <= len(population):
        raise ValueError(f'num_train_steps must lie in [1, {len(population)}] for the range '
                         f'[{range_start}, {range_end}], got {num_train_steps}')
    rng = random.Random(seed + epoch * 100000 + 104729)
    return sorted(rng.sample(population, num_train_steps))


def prompt_noise_seed(prompt: str, step_index: int, epoch: int) -> int:
    """Seed of the shared noise of a non-selected stochastic step, ALGORITHM.md 4.3.

    ``(int.from_bytes(sha256(prompt.encode('utf-8')).digest()[:4], 'big') + step_index * 10007
    + epoch * 100000) mod 2^31``. Big-endian: the first 4 digest bytes read as one number, the
    same as ``int(sha256(...).hexdigest()[:8], 16)``. SHA-256 (not ``hash()``) so the value is the
    same in every process regardless of ``PYTHONHASHSEED``.

    Args:
        prompt: the prompt string.
        step_index: denoising step index ``j``.
        epoch: current epoch.

    Returns:
        Seed in ``[0, 2^31)``.
    """
    head = int.from_bytes(hashlib.sha256(prompt.encode('utf-8')).digest()[:4], 'big')
    return (head + step_index * 10007 + epoch * 100000) % 2**31


def shared_step_noise(prompts: Sequence[str], step_index: int, epoch: int,
                      shape_per_sample: Sequence[int],
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Prompt-deterministic CPS noise for a non-selected step, ALGORITHM.md 4.3 and 9.8.

    Sample ``i`` gets ``randn(shape)`` from a CPU ``torch.Generator`` seeded with
    ``prompt_noise_seed(prompts[i], step_index, epoch)``, so the K copies of a prompt get identical
    noise wherever they sit in the batch and on whichever rank. Drawn in float32 on the CPU (the
    CPU generator's stream does not depend on the accelerator) and then cast, so the values do not
    depend on ``dtype`` beyond rounding. The caller moves the result to its device.

    Args:
        prompts: ``N`` prompt strings.
        step_index: denoising step index ``j``.
        epoch: current epoch.
        shape_per_sample: latent shape of one sample, e.g. ``(C, H, W)``.
        dtype: dtype of the result.

    Returns:
        ``(N, *shape_per_sample)`` standard normal noise on the CPU.
    """
    shape = tuple(int(d) for d in shape_per_sample)
    cache: dict[str, Tensor] = {}
    for prompt in prompts:
        if prompt not in cache:
            seed = prompt_noise_seed(prompt, step_index, epoch)
            gen = torch.Generator(device='cpu').manual_seed(seed)
            cache[prompt] = torch.randn(shape, generator=gen, dtype=torch.float32)
    if not prompts:
        return torch.empty((0, *shape), dtype=dtype)
    return torch.stack([cache[p] for p in prompts]).to(dtype)


__all__ = [
    'finite_rewards', 'global_moments', 'group_advantages', 'combine_advantages',
    'clipped_ratio_loss', 'select_step_subset',
    'prompt_noise_seed', 'shared_step_noise',
]
