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
distance of a resample uses the eigenvalues of ``S_a S_b`` for ``tr (S_a S_b)^(1/2)`` (the
product of two PSD matrices has real non-negative eigenvalues), which batches over resamples;
it equals :func:`~rtdmd.evaluation.shapes_fidelity.frechet_distance` to rounding (tested).
Duplicated prompts shrink a resample's covariance slightly, a known bias of bootstrapping a
Frechet distance; the interval shows its spread, not an unbiased centre.

Per-image scores are kept by :func:`image_scores` and written per run as
``<work_dir>/eval/scores.npz`` (:func:`save_scores`), so a table over seeds is computed from
the runs' files without sampling again (``tools/shapes_table.py``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from rtdmd.rewards.geneval_rules import TAGS
from rtdmd.utils.atomic import atomic_write_bytes

MEAN_COLUMNS = ('partial', 'soft', 'clean', 'geneval_accuracy')
# What one model of one run keeps per image (N images, M reference renderings).
FIELDS = ('prompt', 'tag', 'strict', *MEAN_COLUMNS, 'features', 'reference_prompt',
          'reference_features')


def image_scores(prompt: np.ndarray, tags: Sequence[str], details: dict[str, Any],
                 soft: np.ndarray, features: np.ndarray, reference_prompt: np.ndarray,
                 reference_features: np.ndarray) -> dict[str, np.ndarray]:
    """One model's per-image record (the :data:`FIELDS`) from the detector's details.

    ``prompt`` ``(N,)`` is each image's prompt index, ``tags[prompt]`` its tag; ``strict`` is
    the strict accuracy of the image's own tag.
    """
    tag_index = np.asarray([TAGS.index(t) for t in tags])
    strict = np.full(len(prompt), np.nan)
    for tag in TAGS:
        values = np.asarray(details[f'strict_accuracy/{tag}'], dtype=np.float64)
        strict = np.where(np.isnan(strict), values, strict)
    return dict(prompt=np.asarray(prompt, dtype=np.int64), tag=tag_index,
                strict=strict,
                partial=np.asarray(details[''], dtype=np.float64),
                soft=np.asarray(soft, dtype=np.float64),
                clean=np.asarray(details['clean'], dtype=np.float64),
                geneval_accuracy=np.asarray(details['accuracy'], dtype=np.float64),
                features=np.asarray(features, dtype=np.float64),
                reference_prompt=np.asarray(reference_prompt, dtype=np.int64),
                reference_features=np.asarray(reference_features, dtype=np.float64))


def save_scores(path: str, scores: dict[str, dict[str, np.ndarray]]) -> None:
    """Write ``{model: record}`` as one ``.npz`` (keys ``<model>/<field>``), atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{f'{model}/{field}': record[field]
                                   for model, record in scores.items() for field in FIELDS})
    atomic_write_bytes(path, buffer.getvalue())


def load_scores(path: str) -> dict[str, dict[str, np.ndarray]]:
    """``{model: record}`` of a ``scores.npz``, models in their saved order."""
    scores: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            model, _, field = key.rpartition('/')
            scores.setdefault(model, {})[field] = data[key]
    for model, record in scores.items():
        missing = set(FIELDS) - set(record)
        if missing:
            raise ValueError(f'{path}: model {model!r} lacks {sorted(missing)}; it was not '
                             f'written by rtdmd.evaluation.shapes_bootstrap.save_scores')
    return scores


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(B,)`` means of ``values`` ``(N,)`` under weights ``(B, N)``; NaN values excluded."""
    valid = ~np.isnan(values)
    w = weights[:, valid]
    total = w.sum(1)
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(total > 0, w @ values[valid] / np.where(total > 0, total, 1), np.nan)


def _moments(features: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means ``(B, D)`` and unbiased covariances ``(B, D, D)`` of weighted (repeated) rows."""
    n = weights.sum(1, keepdims=True)
    mean = weights @ features / n
    second = np.einsum('bn,nd,ne->bde', weights, features, features)
    cov = (second - n[:, :, None] * mean[:, :, None] * mean[:, None, :]) / (n[:, :, None] - 1)
    return mean, cov


def batched_frechet(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """``(B,)`` Frechet distances between the weighted feature sets ``a`` and ``b``."""
    mu_a, cov_a = _moments(a, wa)
    mu_b, cov_b = _moments(b, wb)
    eig = np.linalg.eigvals(cov_a @ cov_b).real
    root_trace = np.sqrt(np.clip(eig, 0, None)).sum(-1)
    return (((mu_a - mu_b) ** 2).sum(-1) + np.trace(cov_a, axis1=1, axis2=2)
            + np.trace(cov_b, axis1=1, axis2=2) - 2 * root_trace)


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
    out['fidelity'] = batched_frechet(record['features'], weights,
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


__all__ = ['FIELDS', 'batched_frechet', 'bootstrap_rows', 'image_scores', 'load_scores',
           'prompt_resamples', 'run_statistics', 'save_scores']
