"""The exact reward-tilted family of the analytic world, ``p_beta(x | c) ∝ p(x | c) exp(beta r)``.

Stage 2 (RTDMD) targets the teacher tilted by the reward. For the analytic world's Gaussian-mixture
teacher ``p(x | c) = sum_k w_ck N(mu_k, s_k^2 I)`` two rewards tilt it in closed form, component
by component (only the weights depend on the class, so the tilt stays a mixture of the same kind):

- linear ``r = <a, x>``: ``N(mu_k + beta s_k^2 a, s_k^2 I)``, weight
  ``∝ w_ck exp(beta <a, mu_k> + beta^2 s_k^2 |a|^2 / 2)``;
- quadratic ``r = -|x - c0|^2``: precision ``1 / s_k^2 + 2 beta``, i.e.
  ``s_k'^2 = s_k^2 / (1 + 2 beta s_k^2)``,
  ``mu_k' = (mu_k + 2 beta s_k^2 c0) / (1 + 2 beta s_k^2)``, weight
  ``∝ w_ck E_k[exp(beta r)] = w_ck (1 + 2 beta s_k^2)^(-d/2) exp(-beta |mu_k - c0|^2 /
  (1 + 2 beta s_k^2))``, which equals ``w_ck N(c0; mu_k, (s_k^2 + 1 / (2 beta)) I)`` up to a
  factor common to all k for ``beta > 0``, but is finite and exact at ``beta = 0``.

Any reward with a finite upper bound (``ModeReward``: ``max(values)``; or any scorer with an
``upper_bound`` attribute) is sampled exactly by rejection from the teacher with acceptance
``exp(beta (r(x) - r_max))``. :class:`TiltedSampler` draws its random numbers once, so its samples
for different ``beta`` share them (common random numbers: the fit of ``beta`` is a smooth search).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rtdmd.models.backbones.gaussian_mixture import GaussianMixtureTeacher
from rtdmd.rewards.toy import LinearReward, QuadraticReward

MAX_REJECTION_POOL = 20_000_000  # teacher proposals per class before the sampler gives up


def tilt_parameters(teacher: GaussianMixtureTeacher, reward: torch.nn.Module, beta: float
                    ) -> tuple[Tensor, Tensor, Tensor] | None:
    """Closed-form parameters of the tilted mixture, all in float64.

    Args:
        teacher: the exact Gaussian-mixture teacher (``C + 1`` weight rows, the last the empty
            prompt).
        reward: a reward scorer; only ``LinearReward`` and ``QuadraticReward`` have closed forms.
        beta: the tilt strength.

    Returns:
        ``(means (K, d), stds (K,), log_weights (C + 1, K))`` of ``p_beta``, every row (the empty
        prompt's included) the tilt of the teacher's row; ``None`` if the reward has no closed form.
    """
    means = teacher.means.double()
    var = teacher.stds.double().pow(2)
    log_w = torch.log(teacher.weights.double())
    if isinstance(reward, LinearReward):
        a = _vector(reward.direction, teacher, 'LinearReward.direction')
        new_means = means + beta * var[:, None] * a
        new_var = var
        log_factor = beta * (means @ a) + 0.5 * beta ** 2 * var * a.dot(a)
    elif isinstance(reward, QuadraticReward):
        c0 = _vector(reward.center, teacher, 'QuadraticReward.center')
        prec = 1 + 2 * beta * var                     # (K,) precision times s_k^2
        if bool((prec <= 0).any()):
            raise ValueError(f'the quadratic tilt needs 1 + 2 beta s_k^2 > 0, got beta={beta}')
        new_var = var / prec
        new_means = (means + 2 * beta * var[:, None] * c0) / prec[:, None]
        # log E_k[exp(beta r)]: finite and exactly 0 at beta = 0 (no 1 / beta anywhere).
        log_factor = (-0.5 * teacher.dim * torch.log1p(2 * beta * var)
                      - beta * (means - c0).pow(2).sum(dim=1) / prec)
    else:
        return None
    return new_means, new_var.sqrt(), torch.log_softmax(log_w + log_factor, dim=1)


def _teacher_parameters(teacher: GaussianMixtureTeacher) -> tuple[Tensor, Tensor, Tensor]:
    """The untilted ``(means, stds, log_weights)`` in float64."""
    return teacher.means.double(), teacher.stds.double(), torch.log(teacher.weights.double())


def _vector(value: Tensor, teacher: GaussianMixtureTeacher, what: str) -> Tensor:
    vec = value.detach().double().to(teacher.means.device)
    if vec.shape != (teacher.dim,):
        raise ValueError(f'{what} has shape {tuple(vec.shape)}, the world has d={teacher.dim}')
    return vec


def tilted_mixture(teacher: GaussianMixtureTeacher, reward: torch.nn.Module | None, beta: float
                   ) -> GaussianMixtureTeacher | None:
    """The exact tilted teacher ``p_beta(x | c) ∝ p(x | c) exp(beta r(x))`` as a mixture.

    Returns a copy of the teacher at ``beta = 0`` (any reward), ``None`` for a reward without a
    closed form. The empty-prompt row is the tilt of the teacher's empty-prompt row (not the mean
    of the tilted class rows), so it is overwritten after construction.
    """
    if beta == 0:
        params = _teacher_parameters(teacher)
    else:
        if reward is None:
            raise ValueError('a tilt with beta != 0 needs a reward')
        params = tilt_parameters(teacher, reward, beta)
        if params is None:
            return None
    means, stds, log_w = params
    weights = log_w.exp()
    out = GaussianMixtureTeacher(means.tolist(), stds.tolist(), weights[:-1].tolist())
    out.weights.copy_(weights.float())
    return out.to(teacher.means.device)


def reward_upper_bound(reward: torch.nn.Module) -> float | None:
    """A finite ``sup r`` if the reward declares one (``RewardScorer.upper_bound``)."""
    bound = getattr(reward, 'upper_bound', None)
    return None if bound is None else float(bound)


def _mixture_draw(means: Tensor, stds: Tensor, log_w_row: Tensor, u: Tensor, z: Tensor
                  ) -> Tensor:
    """``mu_k + s_k z`` with ``k`` the inverse CDF of the weights at ``u`` (no multinomial)."""
    cdf = torch.cumsum(log_w_row.exp(), dim=0)
    k = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=cdf.numel() - 1)
    return means[k] + stds[k, None] * z


def _rewards(reward: torch.nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return reward(x.float()).double().reshape(-1)


class TiltedSampler:
    """``n`` exact samples of ``p_beta(. | class_id)`` for any ``beta`` in ``[0, beta_max]``.

    All randomness is drawn at construction, so ``sample(beta)`` is a deterministic function of
    ``beta`` (common random numbers). Closed form: the component is the inverse CDF of the tilted
    weights at fixed uniforms, the sample ``mu_k' + s_k' z`` with fixed normals ``z``. Otherwise:
    a fixed pool of teacher proposals ``x_i`` with uniforms ``u_i``; ``x_i`` is accepted at ``beta``
    iff ``log u_i < beta (r(x_i) - r_max)``, and the first ``n`` accepted are returned (accepted at
    ``beta_max`` implies accepted at every smaller ``beta >= 0``, so the pool drawn until ``n``
    acceptances at ``beta_max`` serves them all).

    Args:
        teacher: the exact teacher.
        reward: the reward scorer (``None`` only with ``beta_max = 0``).
        class_id: the class (``C`` is the empty prompt).
        n: number of samples per call.
        beta_max: largest ``beta`` that will be asked for (``>= 0`` for rejection sampling).
        generator: torch generator for the fixed random numbers.
    """

    def __init__(self, teacher: GaussianMixtureTeacher, reward: torch.nn.Module | None,
                 class_id: int, n: int, beta_max: float,
                 generator: torch.Generator | None = None) -> None:
        self.teacher, self.reward, self.class_id, self.n = teacher, reward, int(class_id), n
        self.beta_max = float(beta_max)
        device = teacher.means.device
        closed = reward is not None and tilt_parameters(teacher, reward, 1.0) is not None
        self.closed_form = reward is None or closed or self.beta_max == 0
        if self.closed_form:
            self.u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
            self.z = torch.randn(n, teacher.dim, generator=generator, dtype=torch.float64,
                                 device=device)
        else:
            self._draw_pool(generator)

    def _draw_pool(self, generator: torch.Generator | None) -> None:
        r_max = reward_upper_bound(self.reward)
        if r_max is None:
            raise ValueError(f'{type(self.reward).__name__} has no closed-form tilt and no finite '
                             'upper bound (set an `upper_bound` attribute), so it cannot be '
                             'sampled exactly')
        if self.beta_max < 0:
            raise ValueError(f'rejection sampling needs beta >= 0, got beta_max={self.beta_max}')
        chunk = max(4 * self.n, 65536)
        xs, log_gaps, log_us, accepted, drawn = [], [], [], 0, 0
        device = self.teacher.means.device
        means, stds, log_w = _teacher_parameters(self.teacher)
        while accepted < self.n:
            if drawn >= MAX_REJECTION_POOL:
                raise RuntimeError(f'rejection sampling at beta={self.beta_max} accepted '
                                   f'{accepted} of {drawn} proposals (needs {self.n}); lower beta')
            u = torch.rand(chunk, generator=generator, dtype=torch.float64, device=device)
            z = torch.randn(chunk, self.teacher.dim, generator=generator, dtype=torch.float64,
                            device=device)
            x = _mixture_draw(means, stds, log_w[self.class_id], u, z)
            gap = (_rewards(self.reward, x) - r_max).clamp(max=0.0)
            log_u = torch.log(torch.rand(chunk, generator=generator, dtype=torch.float64,
                                         device=device))
            xs.append(x)
            log_gaps.append(gap)
            log_us.append(log_u)
            accepted += int((log_u < self.beta_max * gap).sum())
            drawn += chunk
        self.pool_x, self.pool_gap = torch.cat(xs), torch.cat(log_gaps)
        self.pool_log_u = torch.cat(log_us)

    def sample(self, beta: float) -> Tensor:
        """``(n, d)`` float64 exact samples of ``p_beta(. | class_id)``."""
        if beta > self.beta_max * (1 + 1e-12) or (beta < 0 and not self.closed_form):
            raise ValueError(f'beta={beta} outside the sampler range [0, {self.beta_max}]')
        if not self.closed_form:
            idx = torch.nonzero(self.pool_log_u < beta * self.pool_gap).squeeze(1)[:self.n]
            return self.pool_x[idx]
        params = tilt_parameters(self.teacher, self.reward, beta) if beta != 0 else None
        means, stds, log_w = params if params is not None else _teacher_parameters(self.teacher)
        return _mixture_draw(means, stds, log_w[self.class_id], self.u, self.z)


def sample_tilted(teacher: GaussianMixtureTeacher, reward: torch.nn.Module | None, beta: float,
                  class_ids: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Exact samples of ``p_beta(x | c)`` for each class id, ``(B, d)`` float32.

    Closed form for linear / quadratic rewards (and ``beta = 0``), rejection sampling from the
    teacher for bounded rewards otherwise (vectorised: batches of proposals until enough accepted).

    Raises:
        ValueError: for a reward with neither a closed-form tilt nor a finite upper bound.
    """
    out = torch.empty(class_ids.shape[0], teacher.dim, dtype=torch.float64,
                      device=teacher.means.device)
    for c in torch.unique(class_ids).tolist():
        mask = class_ids == c
        sampler = TiltedSampler(teacher, reward, c, int(mask.sum()), beta, generator)
        out[mask] = sampler.sample(beta)
    return out.float()


def exact_mean_reward(teacher: GaussianMixtureTeacher, reward: torch.nn.Module, beta: float,
                      class_id: int, n: int = 262_144,
                      generator: torch.Generator | None = None) -> float:
    """``E_{p_beta(. | c)}[r]``: in closed form where the tilt has one, else Monte Carlo.

    Linear: ``sum_k w_k' <a, mu_k'>``; quadratic: ``-sum_k w_k' (|mu_k' - c0|^2 + d s_k'^2)``.
    Otherwise the mean over ``n`` exact (rejection) samples, standard error ``std(r) / sqrt(n)``
    (``n = 262144`` by default: ``std(r) / 512``).
    """
    params = tilt_parameters(teacher, reward, beta)
    if params is not None:
        means, stds, log_w = params
        w = log_w[int(class_id)].exp()
        if isinstance(reward, LinearReward):
            per_k = means @ _vector(reward.direction, teacher, 'LinearReward.direction')
        else:
            c0 = _vector(reward.center, teacher, 'QuadraticReward.center')
            per_k = -((means - c0).pow(2).sum(dim=1) + teacher.dim * stds.pow(2))
        return float((w * per_k).sum())
    cls = torch.full((n,), int(class_id), dtype=torch.long, device=teacher.means.device)
    x = sample_tilted(teacher, reward, beta, cls, generator)
    return float(_rewards(reward, x).mean())
