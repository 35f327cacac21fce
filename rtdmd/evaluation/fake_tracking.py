"""How well the fake score tracks the generator, against an all-but-exact velocity of the
generator's own distribution (the analytic world).

The generator's distribution has no closed form, but its samples do: ``N`` samples ``x_i`` are
a mixture of ``N`` point masses, and under the rectified-flow interpolant a point mass becomes
``N((1 - t) x_i, t^2 I)``, so the velocity of the samples' distribution at level ``t`` is that
of a Gaussian mixture with the samples as means. :class:`GaussianMixtureTeacher` computes it
(component std ``POINT_STD``, far below ``t``). For ``t`` well above zero it is close to the
velocity of the generator's distribution itself; how close is measured the same way on exact
teacher samples against the exact teacher velocity (``floor``).

At query points ``x_t = (1 - t) x0 + t eps`` from fresh generator samples ``x0`` (a set other
than the mixture's), per class and level:

- ``fake_err``: ``E|v_fake - v_gen|^2``, the fake score's tracking error;
- ``dm_signal``: ``E|v_teacher - v_gen|^2``, the generator's true mismatch the DM term should
  see (its gradient uses ``v_fake - v_teacher``, so ``fake_err`` is the error on it);
- ``fake_teacher``: ``E|v_fake - v_teacher|^2``, what the DM term does see;
- ``floor``: ``E|v_emp - v_teacher|^2`` of the estimator on exact teacher samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rtdmd.models.backbones.gaussian_mixture import GaussianMixtureTeacher

__all__ = ['POINT_STD', 'empirical_velocity', 'fake_tracking']

POINT_STD = 1e-3  # the samples' mixture components: point masses up to this std
CHUNK = 512  # query points per evaluation of the N-component mixture


def empirical_velocity(samples: Tensor, x: Tensor, sigma: float) -> Tensor:
    """Velocity at level ``sigma`` of the distribution of ``samples`` ``(N, d)`` at ``x``."""
    mixture = GaussianMixtureTeacher(samples.double(), [POINT_STD] * samples.shape[0],
                                     [[1.0] * samples.shape[0]]).to(x.device)
    out = []
    for part in x.split(CHUNK):
        level = torch.full((part.shape[0],), sigma, device=x.device)
        out.append(mixture(part, level, torch.zeros(part.shape[0], dtype=torch.long,
                                                     device=x.device)))
    return torch.cat(out)


def _noised(x0: Tensor, sigma: float, gen: torch.Generator) -> Tensor:
    eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    return (1 - sigma) * x0 + sigma * eps


@torch.no_grad()
def fake_tracking(model: torch.nn.Module, num_samples: int = 4096,
                  sigmas: Sequence[float] = (0.25, 0.5, 0.75), seed: int = 0
                  ) -> dict[str, float]:
    """The figures of the module docstring, averaged over the classes and ``sigmas``.

    Args:
        model: a distiller of the analytic world (``GaussianMixtureBackbone``), generator and
            fake score loaded.
        num_samples: generator (and teacher) samples per class, per set (two sets).
        sigmas: the noise levels.
        seed: seeds the samples and the query noise.

    Returns:
        ``fake_err``, ``dm_signal``, ``fake_teacher``, ``floor`` and ``fake_err_rel``
        (``fake_err / dm_signal``).
    """
    backbone = model.backbone
    teacher: GaussianMixtureTeacher = backbone.teacher
    gen = torch.Generator().manual_seed(seed)
    sums = dict.fromkeys(('fake_err', 'dm_signal', 'fake_teacher', 'floor'), 0.0)
    count = 0
    for c in range(teacher.num_classes):
        ids = torch.full((num_samples,), c, dtype=torch.long)
        mix_set = model.generate(ids, seed=seed * 1000 + 2 * c).double()
        query_set = model.generate(ids, seed=seed * 1000 + 2 * c + 1).double()
        exact_mix, exact_query = teacher.sample(ids, gen).double(), teacher.sample(ids, gen)
        cond = backbone.encode_prompts(ids)
        for sigma in sigmas:
            x = _noised(query_set, sigma, gen)
            level = torch.full((num_samples,), sigma)
            v_gen = empirical_velocity(mix_set, x, sigma)
            v_teacher = teacher(x, level, ids)
            v_fake = backbone.predict_velocity('fake_score', x.float(), sigma, cond).double()
            x_exact = _noised(exact_query.double(), sigma, gen)
            v_emp = empirical_velocity(exact_mix, x_exact, sigma)
            sums['fake_err'] += _mse(v_fake, v_gen)
            sums['dm_signal'] += _mse(v_teacher, v_gen)
            sums['fake_teacher'] += _mse(v_fake, v_teacher)
            sums['floor'] += _mse(v_emp, teacher(x_exact, level, ids))
            count += 1
    out = {k: v / count for k, v in sums.items()}
    out['fake_err_rel'] = out['fake_err'] / max(out['dm_signal'], 1e-12)
    return out


def _mse(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).pow(2).sum(-1).mean())
