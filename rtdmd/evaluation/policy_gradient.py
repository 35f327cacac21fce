"""The spread of stage 2's policy-gradient estimate, drawn with the distiller's own code.

One *draw* is what one RL epoch of :class:`~rtdmd.models.distillers.rtdmd.RTDMDDistiller`
back-propagates into the generator before its optimizer step: the epoch's SubGRPO subset, the
rollout (group-shared noise on the stochastic steps not trained, or independent noise), the
rewards, the advantages and the backward passes of the generator terms, all through the
distiller's methods. Only the optimizer step is left out, so every draw is taken at the same
weights, and the draws differ by their epoch index, which keys every random number of an epoch.

:func:`gradient_spread` summarises ``n`` draws ``g_i`` against a reference direction ``u``
(the unit mean of an independent, larger set of draws), scale-free so that estimators with
different means (a subset of ``k`` of the ``m`` stochastic steps estimates about ``k / m`` of the
full trajectory's gradient) compare:

- ``rel_var``: ``tr Cov(g) / |mu|^2`` with the unbiased ``|mu|^2 = |mean g|^2 - tr Cov / n``:
  how many draws an average needs before its noise is as large as its signal;
- ``proj_cv2``: ``Var(<g, u>) / mean(<g, u>)^2``: the same for the component along ``u``;
- ``cos_ref``: the cosine between the draws' mean and ``u`` (is it the same gradient).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from rtdmd.functional.grpo import combine_advantages, finite_rewards, select_step_subset
from rtdmd.models.distillers.rtdmd import RTDMDDistiller, all_reduce_sum

__all__ = ['generator_gradient', 'gradient_draws', 'gradient_spread']


def _batch(num_prompts: int, num_classes: int, device: torch.device) -> dict[str, Tensor]:
    """``num_prompts`` class prompts, the classes in turn (as the prompt dataset's indices)."""
    index = torch.arange(num_prompts, device=device)
    return {'prompt': index % num_classes, 'index': index}


def generator_gradient(model: RTDMDDistiller, data: dict, epoch: int,
                       share_noise: bool = True) -> Tensor:
    """The generator's gradient of one RL epoch at the current weights, flattened.

    Args:
        model: a stage-2 distiller (its terms decide which gradient this is).
        data: the epoch's prompts, as the dataloader gives them.
        epoch: the epoch index that keys the subset and every draw.
        share_noise: SubGRPO's group-shared noise on the stochastic steps not trained; ``False``
            draws them independently per sample (the rollout is told every step is trained;
            the backward passes still train the epoch's subset only).

    Returns:
        ``(P,)`` float64 gradient of the generator's trainable parameters.
    """
    data = model.data_preprocessor(data, True)
    groups = model.repeat_prompts(data)
    cond = model.backbone.encode_prompts(groups.prompts)
    selected = select_step_subset(seed=model.seed, epoch=epoch, **model.subgrpo)
    ctx = model.epoch_context(cond, groups, epoch, selected)
    stochastic = model.sampler.stochastic_steps(model.sampler.sigmas(model.backbone))
    rollout_ctx = ctx if share_noise else replace(ctx, selected=stochastic)
    rollout, scores = model.sample_and_score(rollout_ctx, epoch)
    valid = finite_rewards(scores)
    ctx.advantages = combine_advantages(scores, model.reward.weights, groups.ids,
                                        model.advantage_clip, valid=valid,
                                        all_reduce=all_reduce_sum)
    params = [p for p in model.backbone.net('generator').parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    for _, run in model.generator_passes(ctx, rollout):
        terms, weight = run()
        total = sum(v for k, v in terms.items() if k.startswith('loss_'))
        if isinstance(total, Tensor) and total.requires_grad:
            (total * weight).backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    flat = torch.cat([g.detach().reshape(-1).double() for g in grads])
    for p in params:
        p.grad = None
    return flat


def gradient_draws(model: RTDMDDistiller, num_draws: int, num_prompts: int, num_classes: int,
                   share_noise: bool = True, first_epoch: int = 0) -> Tensor:
    """``(num_draws, P)`` gradients of epochs ``first_epoch, first_epoch + 1, ...``."""
    device = model.iteration.device
    data = _batch(num_prompts, num_classes, device)
    return torch.stack([generator_gradient(model, data, first_epoch + i, share_noise)
                        for i in range(num_draws)])


def gradient_spread(draws: Tensor, reference: Tensor) -> dict[str, float]:
    """Scale-free spread of ``draws`` ``(n, P)`` about their mean, along ``reference`` ``(P,)``
    (see the module docstring). ``reference`` must come from other draws than ``draws``."""
    n = draws.shape[0]
    if n < 2:
        raise ValueError(f'the spread needs at least 2 draws, got {n}')
    mean = draws.mean(0)
    trace = float(((draws - mean) ** 2).sum(1).sum() / (n - 1))
    signal = float(mean.dot(mean)) - trace / n  # unbiased |mu|^2
    u = reference / reference.norm()
    proj = draws @ u
    return dict(draws=n, rel_var=trace / signal if signal > 0 else float('inf'),
                proj_cv2=float(proj.var(unbiased=True) / proj.mean() ** 2),
                cos_ref=float(mean.dot(u) / mean.norm()),
                mean_norm=float(mean.norm()), signal_norm=max(signal, 0.0) ** 0.5)
