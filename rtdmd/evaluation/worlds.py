"""A seeded family of analytic worlds: random Gaussian mixtures and rewards nobody tuned for.

``draw_world(seed)`` returns one world of the analytic world's fixed interface (``world``:
``means K x d``, ``stds K``, ``class_weights C x K``) with a reward config, a pure function of
the seed. The ranges (``WorldFamily``, all documented in docs/analytic_world.md):

- dimension ``d`` uniform in ``{2, 3, 4}``; ``K`` uniform in ``{3, ..., 10}`` components;
  ``C`` uniform in ``{2, 3}`` classes;
- component stds log-uniform in ``[0.2, 0.6]`` (a width ratio of up to 3);
- means uniform in the ball of radius 3 (the default ring's radius) with every pair at least
  ``4 max(s_i, s_j)`` apart (the density at the midpoint of two equal components is then at most
  ``exp(-2)`` of their peak, so the modes are distinct and there is low-density space between
  them); after 200 failed draws the radius grows by 5%, so dense worlds spread out;
- class weights ``0.9 Dirichlet(1, ..., 1) + 0.1 / K``: unequal, every component at least
  ``0.1 / K``;
- the reward cycles with the seed through ``linear`` (``<a, x>``, ``a`` uniform on the unit
  sphere), ``quadratic`` (``-|x - c0|^2``; ``c0`` cycles with ``seed // 3`` through a mode's mean,
  the midpoint of a mode and its nearest neighbour, i.e. between modes, and a uniform point of
  the ball, i.e. anywhere) and ``mode`` (``ModeReward``, values uniform in ``[0, 1]``), so any 3
  consecutive seeds hold every kind.

Each kind has the ``beta`` search bound of the evaluation (``BETA_GRID_MAX``): the mode reward
is bounded in ``[0, 1]`` and reweights modes by ``exp(beta * value)``, so it needs a larger one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

REWARD_KINDS = ('linear', 'quadratic', 'mode')
QUADRATIC_PEAKS = ('mode', 'between', 'anywhere')
BETA_GRID_MAX = {'linear': 2.0, 'quadratic': 2.0, 'mode': 20.0}


@dataclasses.dataclass(frozen=True)
class WorldFamily:
    """The ranges worlds are drawn from (see the module docstring)."""

    dims: tuple[int, ...] = (2, 3, 4)
    components: tuple[int, int] = (3, 10)
    classes: tuple[int, int] = (2, 3)
    std_range: tuple[float, float] = (0.2, 0.6)
    radius: float = 3.0
    separation: float = 4.0
    weight_floor: float = 0.1
    max_tries: int = 200


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """One drawn world.

    Attributes:
        seed: the seed it was drawn from.
        world: ``dict(means, stds, class_weights)`` (plain lists of floats).
        reward: the reward config (a registered scorer; ``ModeReward`` refers to
            ``'${world.means}'``).
        kind: ``'linear'``, ``'quadratic'`` or ``'mode'``.
        peak: for a quadratic reward where its peak lies (``QUADRATIC_PEAKS``), else ``''``.
        beta_grid_max: the evaluation's ``beta`` search bound for this kind of reward.
    """

    seed: int
    world: dict[str, list]
    reward: dict[str, Any]
    kind: str
    peak: str
    beta_grid_max: float

    @property
    def dim(self) -> int:
        return len(self.world['means'][0])

    @property
    def num_components(self) -> int:
        return len(self.world['means'])

    @property
    def num_classes(self) -> int:
        return len(self.world['class_weights'])

    def describe(self) -> str:
        """E.g. ``'d=3 K=7 C=2 quadratic (between)'``."""
        reward = f'{self.kind} ({self.peak})' if self.peak else self.kind
        return f'd={self.dim} K={self.num_components} C={self.num_classes} {reward}'


def _means(rng: np.random.Generator, stds: np.ndarray, dim: int, fam: WorldFamily
           ) -> np.ndarray:
    """Means uniform in a ball, pairwise ``>= separation * max(s_i, s_j)`` apart."""
    radius = fam.radius
    while True:
        means: list[np.ndarray] = []
        for k in range(len(stds)):
            for _ in range(fam.max_tries):
                cand = _in_ball(rng, dim, radius)
                if all(np.linalg.norm(cand - m) >= fam.separation * max(stds[k], stds[j])
                       for j, m in enumerate(means)):
                    means.append(cand)
                    break
            else:
                break
        if len(means) == len(stds):
            return np.stack(means)
        radius *= 1.05  # too crowded for this radius: spread out


def _in_ball(rng: np.random.Generator, dim: int, radius: float) -> np.ndarray:
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    return radius * rng.uniform() ** (1.0 / dim) * direction


def _reward(rng: np.random.Generator, kind: str, peak: str, means: np.ndarray,
            radius: float) -> dict[str, Any]:
    dim = means.shape[1]
    if kind == 'linear':
        a = rng.standard_normal(dim)
        return dict(type='LinearReward', direction=_round(a / np.linalg.norm(a)))
    if kind == 'mode':
        return dict(type='ModeReward', values=_round(rng.uniform(0.0, 1.0, len(means))),
                    means='${world.means}')
    k = int(rng.integers(len(means)))
    if peak == 'mode':
        center = means[k]
    elif peak == 'between':
        dist = np.linalg.norm(means - means[k], axis=1)
        dist[k] = np.inf
        center = 0.5 * (means[k] + means[int(np.argmin(dist))])
    else:
        center = _in_ball(rng, dim, radius)
    return dict(type='QuadraticReward', center=_round(center))


def _round(x: np.ndarray) -> list:
    """Plain floats with 4 decimals: readable configs, and the world is what was written."""
    return np.round(np.asarray(x, dtype=np.float64), 4).tolist()


def draw_world(seed: int, family: WorldFamily | None = None) -> WorldSpec:
    """The world of ``seed`` (a pure function of it; see the module docstring).

    Args:
        seed: any non-negative integer.
        family: the ranges; the documented defaults when ``None``.

    Returns:
        The :class:`WorldSpec`.
    """
    if seed < 0:
        raise ValueError(f'world seeds are non-negative, got {seed}')
    fam = family or WorldFamily()
    rng = np.random.default_rng([seed, 20240615])
    dim = int(rng.choice(fam.dims))
    k = int(rng.integers(fam.components[0], fam.components[1] + 1))
    c = int(rng.integers(fam.classes[0], fam.classes[1] + 1))
    log_lo, log_hi = math.log(fam.std_range[0]), math.log(fam.std_range[1])
    stds = np.exp(rng.uniform(log_lo, log_hi, k))
    means = _means(rng, stds, dim, fam)
    weights = (1 - fam.weight_floor) * rng.dirichlet(np.ones(k), size=c) + fam.weight_floor / k
    kind = REWARD_KINDS[seed % len(REWARD_KINDS)]
    peak = QUADRATIC_PEAKS[(seed // len(REWARD_KINDS)) % len(QUADRATIC_PEAKS)] \
        if kind == 'quadratic' else ''
    radius = float(np.linalg.norm(means, axis=1).max())
    world = dict(means=_round(means), stds=_round(stds), class_weights=_round(weights))
    return WorldSpec(seed=seed, world=world, reward=_reward(rng, kind, peak, means, radius),
                     kind=kind, peak=peak, beta_grid_max=BETA_GRID_MAX[kind])
