"""Bootstrap intervals of the shapes table: the batched Frechet distance equals FID's sqrtm
formula, the full-data statistic is the point estimate, and the intervals behave as intervals."""

from __future__ import annotations

import numpy as np
from scipy import linalg

from rtdmd.evaluation.shapes_bootstrap import bootstrap_rows, prompt_resamples, run_statistics
from rtdmd.evaluation.shapes_fidelity import frechet_distance, weighted_frechet_distances
from rtdmd.rewards.geneval_rules import TAGS


def _record(rng: np.random.Generator, p_correct: float, shift: float, per_tag: int = 8,
            seeds: int = 2) -> dict[str, np.ndarray]:
    tags = np.repeat(np.arange(len(TAGS)), per_tag)
    prompt = np.tile(np.arange(len(tags)), seeds)
    n = len(prompt)
    ref_prompt = np.tile(prompt, 2)
    return dict(prompt=prompt, tag=tags[prompt],
                strict=(rng.random(n) < p_correct).astype(float),
                partial=rng.random(n), soft=rng.random(n), clean=rng.random(n),
                geneval_accuracy=rng.random(n),
                features=rng.normal(size=(n, 5)) + shift,
                reference_prompt=ref_prompt,
                reference_features=rng.normal(size=(len(ref_prompt), 5)))


def _fid_sqrtm(a: np.ndarray, b: np.ndarray) -> float:
    """FID's reference formula, with ``scipy.linalg.sqrtm`` for the matrix root."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.real(linalg.sqrtm(cov_a @ cov_b))
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_batched_frechet_equals_reference_with_repeats() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(40, 4)) + 0.5
    wa, wb = rng.integers(0, 3, size=(3, 30)), rng.integers(0, 3, size=(3, 40))
    got = weighted_frechet_distances(a, wa.astype(float), b, wb.astype(float))
    for k in range(3):
        expected = _fid_sqrtm(np.repeat(a, wa[k], 0), np.repeat(b, wb[k], 0))
        assert np.isclose(got[k], expected, rtol=1e-6, atol=1e-9)
    assert np.isclose(frechet_distance(a, b), _fid_sqrtm(a, b), rtol=1e-6, atol=1e-9)


def test_resamples_keep_each_tag_weight() -> None:
    tags = np.repeat(np.arange(3), [4, 5, 6])
    counts = prompt_resamples(tags, 50, np.random.default_rng(1))
    for t, size in enumerate([4, 5, 6]):
        assert (counts[:, tags == t].sum(1) == size).all()


def test_point_is_full_data_statistic_and_interval_brackets_it() -> None:
    rng = np.random.default_rng(2)
    runs = [{'good': _record(rng, 0.8, 0.0), 'bad': _record(rng, 0.1, 3.0)} for _ in range(3)]
    table = bootstrap_rows(runs, num_resamples=300, seed=0)
    full = np.ones((1, 6 * 8), dtype=np.int64)
    for model in ('good', 'bad'):
        per_run = [run_statistics(run[model], full)['strict'][0] for run in runs]
        row = table[model]['strict']
        assert np.isclose(row['mean'], np.mean(per_run)) and row['runs'] == 3
        assert row['low'] <= row['mean'] <= row['high']
        assert row['run_min'] == min(per_run) and row['run_max'] == max(per_run)
    # The two models are far apart: their intervals do not overlap.
    assert table['bad']['strict']['high'] < table['good']['strict']['low']
    assert table['good']['fidelity']['high'] < table['bad']['fidelity']['low']
    # Reproducible from the seed.
    assert bootstrap_rows(runs, num_resamples=300, seed=0) == table
