"""Bootstrap intervals for the shapes world's table, within a run and over training seeds.

A table row is a statistic of a set of images: a mean over images (partial score, soft reward,
clean fraction), a mean of per-tag means (strict accuracy) or a set distance (the fidelity
Frechet distance). Its uncertainty has two sources: which prompts were drawn, and, across runs,
which training seed made the student. :func:`bootstrap_rows` resamples both:

- **prompts**, stratified by tag: each resample draws every tag's prompts with replacement, so
  each tag keeps its weight, and a drawn prompt brings all of its images (one per sampling
  seed) and, for the fidelity distance, its own reference renderings. Images of one prompt are
  not independent, so the prompt is the unit, not the image;
- **runs**, with replacement, when several runs (training seeds) of one model are pooled: the
  statistic of a resample is the mean over the drawn runs of each run's statistic on the drawn
  prompts (the same prompts for every run: the held-out set is shared).

The point estimate is the statistic on the full data, averaged over runs; the interval is the
percentile interval of the resamples. With three runs the run-level resampling is coarse (ten
distinct multisets), which is why the table also reports the per-run range. The fidelity
distance of every resample comes from one batched call,
:func:`~rtdmd.evaluation.shapes_fidelity.weighted_frechet_distances`, the formula
``frechet_distance`` uses. Duplicated prompts shrink a resample's covariance slightly, a known
bias of bootstrapping a Frechet distance; the interval shows its spread, not an unbiased centre.

``scipy.stats.bootstrap`` (behind :func:`~rtdmd.evaluation.benchmark.bootstrap_ci`) resamples
independent observations; it has no strata, clusters or a second, crossed level, so the draws
are made here and only the statistics are vectorised.

A run's per-model record (:data:`FIELDS`) holds, per image, its prompt index, tag and scores and
its classifier features, and the reference renderings' prompt indices and features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rtdmd.rewards.geneval_rules import TAGS

from .shapes_fidelity import weighted_frechet_distances

MEAN_COLUMNS = ('partial', 'soft', 'clean', 'geneval_accuracy')
# What one model of one run keeps per image (N images, M reference renderings).
FIELDS = ('prompt', 'tag', 'strict', *MEAN_COLUMNS, 'features', 'reference_prompt',
          'reference_features')


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(B,)`` means of ``values`` ``(N,)`` under weights ``(B, N)``; NaN values excluded."""
    valid = ~np.isnan(values)
    w = weights[:, valid]
    total = w.sum(1)
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(total > 0, w @ values[valid] / np.where(total > 0, total, 1), np.nan)


def run_statistics(record: dict[str, np.ndarray], prompt_counts: np.ndarray
                   ) -> dict[str, np.ndarray]:
    """Every column of one run under prompt weights ``(B, P)``: ``{column: (B,)}``.

    ``strict`` is the mean over the tags present of the per-tag means, as the table averages
    GenEval's tasks; the others are means over images, and ``fidelity`` the Frechet distance.
    """
    weights = prompt_counts[:, record['prompt']].astype(np.float64)
    out = {}
    for i, tag in enumerate(TAGS):
        if (record['tag'] == i).any():
            out[f'strict/{tag}'] = _weighted_mean(
                np.where(record['tag'] == i, record['strict'], np.nan), weights)
    out['strict'] = np.mean([v for k, v in out.items() if k.startswith('strict/')], axis=0)
    for column in MEAN_COLUMNS:
        out[column] = _weighted_mean(record[column], weights)
    ref_weights = prompt_counts[:, record['reference_prompt']].astype(np.float64)
    out['fidelity'] = weighted_frechet_distances(record['features'], weights,
                                                 record['reference_features'], ref_weights)
    return out


def prompt_resamples(prompt_tags: np.ndarray, num_resamples: int, rng: np.random.Generator
                     ) -> np.ndarray:
    """``(B, P)`` counts: each tag's prompts drawn with replacement, as many as it has."""
    counts = np.zeros((num_resamples, len(prompt_tags)), dtype=np.int64)
    for tag in np.unique(prompt_tags):
        members = np.flatnonzero(prompt_tags == tag)
        counts[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)),
                                             size=num_resamples)
    return counts


def bootstrap_rows(runs: Sequence[dict[str, dict[str, np.ndarray]]], num_resamples: int = 1000,
                   confidence: float = 0.95, seed: int = 0
                   ) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {column: dict(mean, low, high, run_min, run_max, runs)}}`` over ``runs``.

    ``runs`` holds one ``{model: record}`` per training run; a model is pooled over the runs
    that have it, which must share their prompts (the same held-out set). Reproducible: the
    resamples come from ``numpy.random.default_rng(seed)``, drawn once and shared by every
    model, so two rows' intervals come from the same prompt and run draws.
    """
    if not runs:
        raise ValueError('bootstrap_rows needs at least one run')
    if num_resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f'need num_resamples >= 1 and 0 < confidence < 1, got '
                         f'{num_resamples}, {confidence}')
    models = list(dict.fromkeys(m for run in runs for m in run))
    first = next(run[m] for run in runs for m in run)
    num_prompts = int(first['prompt'].max()) + 1
    prompt_tags = np.full(num_prompts, -1)
    prompt_tags[first['prompt']] = first['tag']
    rng = np.random.default_rng(seed)
    counts = prompt_resamples(prompt_tags, num_resamples, rng)
    full = np.ones((1, num_prompts), dtype=np.int64)
    alpha = (1 - confidence) / 2
    table: dict[str, dict[str, dict[str, float]]] = {}
    for model in models:
        records = [run[model] for run in runs if model in run]
        for record in records:
            missing = set(FIELDS) - set(record)
            if missing:
                raise ValueError(f'model {model!r}: a record lacks {sorted(missing)} '
                                 f'(a record holds {", ".join(FIELDS)})')
            if not np.array_equal(prompt_tags[record['prompt']], record['tag']):
                raise ValueError(f'model {model!r}: the runs do not share their prompts; '
                                 f'pool only runs of one held-out set')
        points = [run_statistics(r, full) for r in records]
        resampled = [run_statistics(r, counts) for r in records]
        run_draws = rng.multinomial(len(records), np.full(len(records), 1 / len(records)),
                                    size=num_resamples)  # (B, R): how often each run is drawn
        row = {}
        for column in points[0]:
            per_run = np.array([p[column][0] for p in points])
            stacked = np.stack([s[column] for s in resampled], axis=1)  # (B, R)
            draws = (stacked * run_draws).sum(1) / len(records)
            low, high = np.nanquantile(draws, [alpha, 1 - alpha])
            row[column] = dict(mean=float(per_run.mean()), low=float(low), high=float(high),
                               run_min=float(per_run.min()), run_max=float(per_run.max()),
                               runs=len(records))
        table[model] = row
    return table


__all__ = ['FIELDS', 'bootstrap_rows', 'prompt_resamples', 'run_statistics']
