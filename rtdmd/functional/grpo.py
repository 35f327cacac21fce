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
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def _population_std(x: Tensor) -> Tensor:
    # ddof 0, as the release's np.std; torch's default (Bessel) would differ by sqrt(N/(N-1)).
    return torch.std(x, correction=0)


def _out_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def group_advantages(rewards: Tensor, group_ids: Tensor, eps: float = 1e-4) -> Tensor:
    """Per-group-mean, global-std advantages of one reward (``per_prompt_global_std: true``).

    ``A_i = (r_i - mean_{j: g_j = g_i} r_j) / (std_{all j} r_j + eps)``, where the std is the
    population std (ddof 0, like the release's ``np.std``). Statistics are taken in float64 (the
    release works on float64 numpy arrays). Vectorised with ``index_add_``; ``group_ids`` may be
    any integers (they are relabelled with ``torch.unique``).

    Args:
        rewards: ``(N,)`` rewards of all N samples of the epoch (gathered over ranks).
        group_ids: ``(N,)`` long, equal for the K copies of one prompt.
        eps: added to the std.

    Returns:
        ``(N,)`` advantages in the dtype of ``rewards`` (default float dtype for integer rewards).
    """
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f'rewards and group_ids must both be (N,), got {tuple(rewards.shape)} '
                         f'and {tuple(group_ids.shape)}')
    r = rewards.to(torch.float64)
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.shape[0], dtype=r.dtype, device=r.device).index_add_(0, inverse, r)
    group_mean = (sums / counts.to(r.dtype))[inverse]
    return ((r - group_mean) / (_population_std(r) + eps)).to(_out_dtype(rewards))


def combine_advantages(rewards: Mapping[str, Tensor], weights: Mapping[str, float],
                       group_ids: Tensor, clip: float = 5.0, eps: float = 1e-4) -> Tensor:
    """Multi-reward advantages (``weight_advantages: true``), ALGORITHM.md 4.4 and 9.9.

    ``A = sum_r w_r A_r`` with ``A_r = group_advantages(r)``; then the global re-standardisation
    ``A <- (A - mean A) / (std A + eps)`` (population std, ddof 0) and ``A <- clamp(A, -clip,
    clip)``. Standardising each reward first matters: raw reward scales differ by ~20x.

    Args:
        rewards: name -> ``(N,)`` rewards.
        weights: name -> weight; must have exactly the keys of ``rewards``.
        group_ids: ``(N,)`` long group (prompt) ids.
        clip: bound of the final clamp (``adv_clip_max``).
        eps: added to every std.

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
    total = None
    for name, reward in rewards.items():
        term = float(weights[name]) * group_advantages(reward, group_ids, eps).to(torch.float64)
        total = term if total is None else total + term
    total = (total - total.mean()) / (_population_std(total) + eps)
    return total.clamp(-clip, clip).to(_out_dtype(next(iter(rewards.values()))))


def _masked_std(x: Tensor, valid: Tensor) -> Tensor:
    """Population std of ``x[valid]`` (0 when fewer than one valid value), without indexing."""
    n = valid.sum().clamp_min(1).to(x.dtype)
    mean = torch.where(valid, x, 0.0).sum() / n
    return torch.sqrt(torch.where(valid, (x - mean) ** 2, 0.0).sum() / n)


def finite_combine_advantages(rewards: Mapping[str, Tensor], weights: Mapping[str, float],
                              group_ids: Tensor, clip: float = 5.0, eps: float = 1e-4
                              ) -> tuple[Tensor, Tensor]:
    """:func:`combine_advantages` over the samples whose rewards are all finite.

    A sample with a NaN or infinite reward (under any reward) is dropped: it enters no group
    mean, no std and no re-standardisation, and gets advantage 0, so it adds no policy gradient.
    With every reward finite the result equals :func:`combine_advantages`. The caller logs
    ``(~valid).sum()`` (or stops the run) so a dropped sample is never silent.

    Args:
        rewards, weights, group_ids, clip, eps: as :func:`combine_advantages`.

    Returns:
        ``(advantages, valid)``: ``(N,)`` advantages (0 where not valid) and the ``(N,)`` bool
        mask of samples whose rewards were all finite.

    Raises:
        ValueError: as :func:`combine_advantages`.
    """
    missing_reward = sorted(set(weights) - set(rewards))
    missing_weight = sorted(set(rewards) - set(weights))
    if missing_reward or missing_weight:
        raise ValueError(f'reward/weight keys differ: weights without a reward {missing_reward}, '
                         f'rewards without a weight {missing_weight}')
    if not rewards:
        raise ValueError('combine_advantages needs at least one reward')
    first = next(iter(rewards.values()))
    if group_ids.shape != first.shape or first.ndim != 1:
        raise ValueError(f'rewards and group_ids must both be (N,), got {tuple(first.shape)} '
                         f'and {tuple(group_ids.shape)}')
    valid = torch.stack([torch.isfinite(r) for r in rewards.values()]).all(dim=0)
    labels, inverse = torch.unique(group_ids, return_inverse=True)
    groups = labels.shape[0]
    total = torch.zeros(first.shape, dtype=torch.float64, device=first.device)
    for name, reward in rewards.items():
        r = torch.where(valid, reward.to(torch.float64), 0.0)
        sums = torch.zeros(groups, dtype=r.dtype, device=r.device).index_add_(0, inverse, r)
        counts = torch.zeros(groups, dtype=r.dtype, device=r.device).index_add_(
            0, inverse, valid.to(r.dtype))
        group_mean = (sums / counts.clamp_min(1))[inverse]
        term = (r - group_mean) / (_masked_std(r, valid) + eps)
        total = total + float(weights[name]) * torch.where(valid, term, 0.0)
    n = valid.sum().clamp_min(1).to(total.dtype)
    mean = total.sum() / n
    total = (total - mean) / (_masked_std(total, valid) + eps)
    adv = torch.where(valid, total.clamp(-clip, clip), 0.0)
    return adv.to(_out_dtype(first)), valid


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
    'group_advantages', 'combine_advantages', 'finite_combine_advantages', 'clipped_ratio_loss',
    'select_step_subset', 'prompt_noise_seed', 'shared_step_noise',
]
