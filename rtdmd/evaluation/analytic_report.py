"""Evaluation of several models against the analytic world's exact truth (``tools/test.py``).

Per model and class (``N`` samples), averaged over classes:

- ``sw2_teacher``: sliced W2 (fixed projections) to ``N`` exact teacher samples, averaged over
  ``reference_draws`` reference sets; ``sw2_floor``: the same between two exact sample sets of
  size ``N`` (what a perfect model scores);
- ``mode_tv_teacher``: total variation between the sample mode weights (histogram of the argmax
  teacher posterior at ``sigma = 0``) and the teacher's class weights;
- ``off_support``: fraction of samples whose teacher log-density is below the
  ``off_support_quantile`` (0.1% by default) quantile of the log-density of exact teacher samples
  (``(reference_draws + 1) N`` of them);
- with a reward: ``mean_reward``; ``sw2_target`` (to the exact tilted target at the configured
  ``beta``); ``beta_hat`` (the best-fitting member of the exact tilted family, searched on
  ``[0, beta_grid_max]`` with common random numbers), ``beta_hat_at_bound``, ``sw2_family``
  (SW2 at ``beta_hat`` to fresh reference sets, so the argmin does not bias it low),
  ``mean_reward_target`` (exact mean reward at ``beta_hat``) and ``mode_tv_target`` (TV to the
  mode weights of exact samples at ``beta_hat``, same assignment rule); and, from the same fresh
  exact sets at ``beta_hat``, what a perfect member would score: ``sw2_floor_family`` (SW2
  between them), ``off_support_target`` (their off-support fraction under the teacher's
  threshold; a strong tilt legitimately leaves the teacher's support) and ``reward_std_target``
  (the spread of the reward under the member).

Nothing here assumes two dimensions: projections, densities and the tilted family work in any
``d`` (only the figure shows a 2-D view).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from rtdmd.models.backbones.gaussian_mixture import GaussianMixtureTeacher
from rtdmd.utils.atomic import atomic_write, atomic_write_json, atomic_write_text
from rtdmd.utils.provenance import provenance

from .sliced_wasserstein import fixed_projections
from .tilted import TiltedSampler, exact_mean_reward, sample_tilted, tilted_mixture

COLUMNS = ('sw2_teacher', 'sw2_floor', 'mode_tv_teacher', 'off_support', 'mean_reward',
           'sw2_target', 'beta_hat', 'beta_hat_at_bound', 'sw2_family', 'mean_reward_target',
           'mode_tv_target', 'sw2_floor_family', 'off_support_target', 'reward_std_target')
GRID_SIZE = 16          # geometric grid points in [beta_max / 1000, beta_max], plus beta = 0
GRID_RANGE = 1e-3
SEARCH_ITERS = 12       # Brent evaluations in the bracket around the best grid point
SEARCH_XTOL = 0.008     # beta tolerance, relative to that bracket (two grid cells, ~0.95 beta)
SEARCH_DRAWS = 2        # common-random-number reference sets per class in the beta search
OFF_SUPPORT_QUANTILE = 1e-3
MEAN_REWARD_N = 65_536  # exact samples for the target's mean reward without a closed form


def _sorted_proj(x: Tensor, projections: Tensor) -> np.ndarray:
    """``(L, N)`` projections sorted per direction (numpy sorts rows ~3x faster than torch)."""
    theta, x = projections.double().numpy(), x.double().numpy()
    if x.shape[1] > 8:
        return np.sort(theta @ x.T, axis=1)
    proj = theta[:, :1] * x[:, 0]  # small d: broadcasting beats a matmul with inner size d
    for j in range(1, x.shape[1]):
        proj += theta[:, j:j + 1] * x[:, j]
    return np.sort(proj, axis=1)


def _sw2(px: np.ndarray, py: np.ndarray) -> float:
    """SW2 between two sets already projected and sorted (as ``sliced_wasserstein2``)."""
    return float(np.sqrt(np.mean((px - py) ** 2)))


def _mean_sw2(xs: list[np.ndarray], ys: list[np.ndarray]) -> float:
    """Mean SW2 over every pair of a set of ``xs`` and a set of ``ys``."""
    return float(np.mean([_sw2(x, y) for x in xs for y in ys]))


def _pairwise_sw2(sets: list[np.ndarray]) -> float:
    """Mean SW2 over all pairs of distinct sets: the floor of exact sets of this size. One
    set against the others would make the floor as noisy as a single model's SW2 (a mode's
    count fluctuates by ~sqrt(N w), which moves SW2 by +-25% at N = 4096)."""
    return float(np.mean([_sw2(a, b) for i, a in enumerate(sets) for b in sets[i + 1:]]))


def mode_weights(teacher: GaussianMixtureTeacher, x: Tensor, class_id: int) -> Tensor:
    """Histogram of the argmax teacher posterior at ``sigma = 0`` over the K components."""
    cls = torch.full((x.shape[0],), class_id, dtype=torch.long)
    resp, _, _ = teacher.posterior(x, torch.zeros(x.shape[0]), cls)
    return torch.bincount(resp.argmax(1), minlength=resp.shape[1]).double() / x.shape[0]


def _tv(p: Tensor, q: Tensor) -> float:
    return float(0.5 * (p.double() - q.double()).abs().sum())


def beta_grid(beta_max: float) -> list[float]:
    """``0`` and a geometric grid on ``[beta_max / 1000, beta_max]``."""
    return [0.0] + np.geomspace(beta_max * GRID_RANGE, beta_max, GRID_SIZE).tolist()


def fit_beta(objective: Callable[[float], float], beta_max: float,
             grid_values: list[float] | None = None) -> tuple[float, float]:
    """Minimise ``objective`` on ``[0, beta_max]``: ``beta_grid``, then Brent's bounded search
    (``scipy.optimize.minimize_scalar``) between the best grid point's neighbours.

    The grid first: the objective (an SW2 to exact samples) need not be unimodal on the whole
    range, and a local search alone could settle in the wrong basin.

    Args:
        objective: the function of ``beta`` to minimise.
        beta_max: the search bound.
        grid_values: ``objective`` on ``beta_grid(beta_max)`` if already computed.

    Returns:
        ``(beta_hat, objective(beta_hat))``: the best point evaluated.
    """
    from scipy.optimize import minimize_scalar

    grid = beta_grid(beta_max)
    values = grid_values if grid_values is not None else [objective(b) for b in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    found = minimize_scalar(objective, bounds=(lo, hi), method='bounded',
                            options=dict(xatol=SEARCH_XTOL * (hi - lo), maxiter=SEARCH_ITERS))
    if float(found.fun) < values[i]:
        return float(found.x), float(found.fun)
    return float(grid[i]), float(values[i])


class _References:
    """Exact reference sets per ``(class, N)``, shared by all models and cached.

    Seeds follow ``GaussianMixtureMetric`` for the teacher references (``seed + 1000 c``).
    """

    def __init__(self, teacher: GaussianMixtureTeacher, reward: torch.nn.Module | None,
                 projections: Tensor, draws: int, seed: int, beta: float | None,
                 beta_max: float, off_support_quantile: float = OFF_SUPPORT_QUANTILE) -> None:
        self.teacher, self.reward, self.projections = teacher, reward, projections
        self.draws, self.seed, self.beta, self.beta_max = draws, seed, beta, beta_max
        self.quantile = off_support_quantile
        self._cache: dict[tuple, object] = {}

    def _cached(self, key: tuple, build: Callable[[], object]) -> object:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _gen(self, c: int, offset: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + 1000 * c + offset)

    def teacher_sets(self, c: int, n: int) -> tuple[list[np.ndarray], Tensor]:
        """``draws + 1`` sorted projected teacher sets and the pooled log-density threshold."""
        def build() -> tuple[list[np.ndarray], Tensor]:
            gen, cls = self._gen(c, 0), torch.full((n,), c, dtype=torch.long)
            sets = [self.teacher.sample(cls, gen) for _ in range(self.draws + 1)]
            pooled = torch.cat(sets)
            log_p = self.teacher.log_prob(pooled, 0.0, torch.full((pooled.shape[0],), c))
            return ([_sorted_proj(s, self.projections) for s in sets],
                    torch.quantile(log_p, self.quantile))
        return self._cached(('teacher', c, n), build)

    def target_sets(self, c: int, n: int) -> list[np.ndarray]:
        """Sorted projected exact sets of the tilted target at the configured ``beta``."""
        def build() -> list[np.ndarray]:
            gen, cls = self._gen(c, 100), torch.full((n,), c, dtype=torch.long)
            return [_sorted_proj(sample_tilted(self.teacher, self.reward, self.beta, cls, gen),
                                 self.projections) for _ in range(self.draws)]
        return self._cached(('target', c, n), build)

    def search_samplers(self, c: int, n: int) -> list[TiltedSampler]:
        """Common-random-number samplers of the tilted family for the ``beta`` search."""
        return self._cached(('search', c, n), lambda: [
            TiltedSampler(self.teacher, self.reward, c, n, self.beta_max, self._gen(c, 200 + j))
            for j in range(SEARCH_DRAWS)])

    def off_support(self, x: Tensor, c: int, n: int) -> float:
        """Fraction of ``x`` below class ``c``'s log-density threshold (NaN counts as off)."""
        _, threshold = self.teacher_sets(c, n)
        log_p = self.teacher.log_prob(x, 0.0, torch.full((x.shape[0],), c, dtype=torch.long))
        return float((~(log_p >= threshold)).double().mean())

    def family_samples(self, c: int, n: int, beta: float) -> list[Tensor]:
        """Fresh exact sets at ``beta`` (independent of the search's random numbers)."""
        gen, cls = self._gen(c, 300), torch.full((n,), c, dtype=torch.long)
        return [sample_tilted(self.teacher, self.reward, beta, cls, gen).double()
                for _ in range(self.draws)]


def _teacher_metrics(refs: _References, x: Tensor, pxs: list[np.ndarray], c: int
                     ) -> dict[str, float]:
    """Metrics of one class's samples ``x`` (its sets' sorted projections ``pxs``, each of
    ``n`` samples) against the teacher; SW2 figures are means over the sets."""
    n, teacher = pxs[0].shape[1], refs.teacher
    sets, _ = refs.teacher_sets(c, n)
    out = dict(sw2_teacher=_mean_sw2(pxs, sets[1:]), sw2_floor=_pairwise_sw2(sets),
               mode_tv_teacher=_tv(mode_weights(teacher, x, c), teacher.weights[c]),
               off_support=refs.off_support(x, c, n))
    if refs.reward is not None:
        with torch.no_grad():
            out['mean_reward'] = float(refs.reward(x.float()).double().mean())
        if refs.beta is not None:
            out['sw2_target'] = _mean_sw2(pxs, refs.target_sets(c, n))
    return out


# model -> class -> sorted projections (L, n) of each of the class's sets of n samples
Projected = dict[str, dict[int, list[np.ndarray]]]


def _family_objective(refs: _References, sorted_x: dict[int, list[np.ndarray]]
                      ) -> Callable[[float], float]:
    """``beta -> mean over classes, sets and search draws of SW2(set, exact tilted set)``."""
    samplers = {c: refs.search_samplers(c, pxs[0].shape[1]) for c, pxs in sorted_x.items()}

    def objective(beta: float) -> float:
        return float(np.mean([
            _mean_sw2(pxs, [_sorted_proj(s.sample(beta), refs.projections) for s in samplers[c]])
            for c, pxs in sorted_x.items()]))
    return objective


def _grid_values(refs: _References, projected: Projected) -> dict[str, list[float]]:
    """The family objective of every model on ``beta_grid``; each reference sorted once."""
    grid = beta_grid(refs.beta_max)
    acc = {name: np.zeros(len(grid)) for name in projected}
    keys = {(c, pxs[0].shape[1]) for per_class in projected.values()
            for c, pxs in per_class.items()}
    for c, n in sorted(keys):
        users = [m for m, pc in projected.items() if c in pc and pc[c][0].shape[1] == n]
        samplers = refs.search_samplers(c, n)
        for i, beta in enumerate(grid):
            for sampler in samplers:
                ref = _sorted_proj(sampler.sample(beta), refs.projections)
                for m in users:
                    share = len(samplers) * len(projected[m]) * len(projected[m][c])
                    acc[m][i] += sum(_sw2(px, ref) for px in projected[m][c]) / share
    return {m: v.tolist() for m, v in acc.items()}


def _family_metrics(refs: _References, per_class: dict[int, Tensor],
                    sorted_x: dict[int, list[np.ndarray]], grid_values: list[float]
                    ) -> dict[str, float]:
    """``beta_hat`` shared by all classes of a model, and the metrics at it."""
    beta_hat, _ = fit_beta(_family_objective(refs, sorted_x), refs.beta_max, grid_values)
    rows = [_member_metrics(refs, x, sorted_x[c], c, beta_hat) for c, x in per_class.items()]
    out = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    return dict(beta_hat=beta_hat, beta_hat_at_bound=float(beta_hat >= 0.99 * refs.beta_max),
                **out)


def _member_metrics(refs: _References, x: Tensor, pxs: list[np.ndarray], c: int, beta: float
                    ) -> dict[str, float]:
    """One class's samples against fresh exact sets of the member at ``beta``, and what those
    exact sets score themselves (SW2 between them, off-support, reward spread)."""
    n = pxs[0].shape[1]
    fresh = refs.family_samples(c, n, beta)
    sorted_fresh = [_sorted_proj(f, refs.projections) for f in fresh]
    pooled = torch.cat(fresh)
    with torch.no_grad():
        reward_std = float(refs.reward(pooled.float()).double().std())
    return dict(
        sw2_family=_mean_sw2(pxs, sorted_fresh),
        mean_reward_target=exact_mean_reward(refs.teacher, refs.reward, beta, c,
                                             n=MEAN_REWARD_N, generator=refs._gen(c, 400)),
        mode_tv_target=_tv(mode_weights(refs.teacher, x, c),
                           mode_weights(refs.teacher, pooled, c)),
        sw2_floor_family=_pairwise_sw2(sorted_fresh) if len(sorted_fresh) > 1
        else float('nan'),
        off_support_target=refs.off_support(pooled, c, n),
        reward_std_target=reward_std)


def evaluate_models(teacher: GaussianMixtureTeacher, reward: torch.nn.Module | None,
                    samples: dict[str, tuple[Tensor, Tensor]], *, beta: float | None,
                    beta_grid_max: float, num_projections: int = 256, reference_draws: int = 5,
                    seed: int = 0, out_dir: str | None = None,
                    off_support_quantile: float = OFF_SUPPORT_QUANTILE,
                    set_size: int | None = None) -> dict[str, dict[str, float]]:
    """Metrics of every model against exact truth; optionally writes the report files.

    Args:
        teacher: the exact teacher (CPU).
        reward: the stage-2 reward, or ``None`` (then only the teacher metrics).
        samples: ``{model: (x (N, d), c (N,))}``; include ``'teacher'`` (exact samples) to get
            its row and files too.
        beta: the configured tilt (``sw2_target``), or ``None``.
        beta_grid_max: upper bound of the ``beta_hat`` search.
        num_projections: fixed projection directions (``fixed_projections(d, ., seed)``).
        reference_draws: fresh exact reference sets per class, SW2 averaged over them.
        seed: seeds projections and every reference set (shared by all models).
        out_dir: if given, writes ``<model>/samples.npz``, ``metrics.json``, ``table.md`` and
            ``samples.png`` there.
        off_support_quantile: quantile of the exact teacher's log-density below which a sample
            counts as off the support (the exact teacher scores about this value).
        set_size: samples per set ``n`` of every SW2 figure (floors included); a class with
            ``k n`` samples is ``k`` sets whose SW2 figures are averaged, which divides the
            sampling noise of a model's own set. ``None``: one set of all the class's samples.

    Returns:
        ``{model: {metric: value}}`` (the metrics of the module docstring, averaged over classes).
    """
    if reward is not None and not beta_grid_max > 0:
        raise ValueError(f'beta_grid_max must be > 0 with a reward, got {beta_grid_max}')
    if not 0 < off_support_quantile < 1:
        raise ValueError(f'off_support_quantile must lie in (0, 1), got {off_support_quantile}')
    refs_kw = dict(draws=reference_draws, seed=seed, beta=beta, beta_max=beta_grid_max,
                   off_support_quantile=off_support_quantile)
    with _single_thread():
        metrics = _evaluate(teacher, reward, samples, num_projections, refs_kw, set_size)
    if out_dir is not None:
        settings = dict(n_per_class={name: {str(int(k)): int((c == k).sum())
                                            for k in torch.unique(c).tolist()}
                                     for name, (_, c) in samples.items()},
                        num_projections=num_projections, reference_draws=reference_draws,
                        search_draws=SEARCH_DRAWS, beta=beta, beta_grid_max=beta_grid_max,
                        seed=seed, off_support_quantile=off_support_quantile,
                        set_size=set_size,
                        reward=None if reward is None else type(reward).__name__)
        write_report(out_dir, teacher, reward, beta, samples, metrics, settings)
    return metrics


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """One torch thread: the work is numpy sorts and many tiny torch ops, for which intra-op
    threads only add wake-up latency (milliseconds per op on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _evaluate(teacher: GaussianMixtureTeacher, reward: torch.nn.Module | None,
              samples: dict[str, tuple[Tensor, Tensor]], num_projections: int, refs_kw: dict,
              set_size: int | None) -> dict[str, dict[str, float]]:
    """The metrics of ``evaluate_models`` (no files); ``refs_kw``: :class:`_References`'."""
    projections = fixed_projections(teacher.dim, num_projections, refs_kw['seed'])
    refs = _References(teacher, reward, projections, **refs_kw)
    split = {name: _split(x, c) for name, (x, c) in samples.items()}
    projected = {name: {k: [_sorted_proj(part, projections) for part in _sets(xk, set_size, name)]
                        for k, xk in pc.items()} for name, pc in split.items()}
    metrics: dict[str, dict[str, float]] = {}
    for name, per_class in split.items():
        rows = [_teacher_metrics(refs, xk, projected[name][k], k) for k, xk in per_class.items()]
        metrics[name] = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    if reward is not None:
        grid_values = _grid_values(refs, projected)
        for name, per_class in split.items():
            metrics[name].update(_family_metrics(refs, per_class, projected[name],
                                                 grid_values[name]))
    return metrics


def _sets(x: Tensor, set_size: int | None, name: str) -> list[Tensor]:
    """``x`` cut into sets of ``set_size`` samples (one set if ``None``)."""
    if set_size is None:
        return [x]
    if set_size < 1 or x.shape[0] % set_size:
        raise ValueError(f'{name}: {x.shape[0]} samples of a class are not whole sets of '
                         f'set_size={set_size}')
    return list(x.split(set_size))


def _split(x: Tensor, c: Tensor) -> dict[int, Tensor]:
    """``{class: samples}`` on CPU in float32."""
    x, c = x.detach().float().cpu(), c.detach().long().cpu()
    if x.ndim != 2 or c.shape != (x.shape[0],):
        raise ValueError(f'samples must be x (N, d) and c (N,), got {tuple(x.shape)} and '
                         f'{tuple(c.shape)}')
    return {int(k): x[c == k] for k in torch.unique(c).tolist()}


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    """Markdown table (``tabulate``, GitHub style), one row per model (``_``-prefixed entries
    skipped), 3 decimals, ``-`` where a model lacks a metric."""
    from tabulate import tabulate

    models = [m for m in metrics if not m.startswith('_')]
    present = {k for m in models for k in metrics[m]}
    cols = [k for k in COLUMNS if k in present] + sorted(present - set(COLUMNS))
    rows = [[m, *(metrics[m].get(k) for k in cols)] for m in models]
    return tabulate(rows, headers=['model', *cols], tablefmt='github', floatfmt='.3f',
                    missingval='-')


def write_report(out_dir: str, teacher: GaussianMixtureTeacher, reward: torch.nn.Module | None,
                 beta: float | None, samples: dict[str, tuple[Tensor, Tensor]],
                 metrics: dict[str, dict[str, float]], settings: dict) -> None:
    """``<model>/samples.npz`` (x float32 (N, d), c int64 (N,)), metrics.json, table.md, PNG."""
    from .plots import plot_samples  # matplotlib only when writing files

    os.makedirs(out_dir, exist_ok=True)
    for name, (x, c) in samples.items():
        arrays = dict(x=x.detach().cpu().numpy().astype(np.float32),
                      c=c.detach().cpu().numpy().astype(np.int64))
        atomic_write(os.path.join(out_dir, name, 'samples.npz'),
                     lambda f, arrays=arrays: np.savez(f, **arrays))
    atomic_write_json(os.path.join(out_dir, 'metrics.json'),
                      {**metrics, '_settings': settings, '_provenance': provenance()})
    atomic_write_text(os.path.join(out_dir, 'table.md'), format_table(metrics) + '\n')
    tilted = None  # the teacher's contours on every panel without a closed-form tilt
    if reward is not None and beta is not None:
        tilted = tilted_mixture(teacher, reward, beta)
    plot_samples(samples, teacher, os.path.join(out_dir, 'samples.png'), tilted=tilted,
                 beta=beta, metrics=metrics, reward=reward)
