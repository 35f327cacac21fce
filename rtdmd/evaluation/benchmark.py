"""Benchmark harness: generate images for a prompt set, score them, summarise, compare methods.

``run_benchmark`` evaluates one generator (a checkpoint, an exported pipeline or the teacher at N
steps with CFG: anything behind ``generate(prompts, sample_seeds) -> images``, see
:mod:`rtdmd.evaluation.generators`) on one prompt set with several seeds and reward scorers.
Sample ``(index, seed)`` gets its own seed ``sample_seed(seed, index)``, recorded with its
scores, so its image does not depend on the batch it was generated in. It writes, under ``out_dir``:

- ``scores.jsonl``: a header line ``{"_settings": ...}`` then one line per (prompt index, seed)
  with every reward. Appended batch by batch, so an interrupted run resumes where it stopped;
  a rerun whose settings differ from the recorded ones is refused (:class:`SettingsMismatchError`).
- ``metrics.json``: ``{reward: summarize(scores)}`` plus ``_settings``.
- ``samples/`` and ``grid.png``: the first (up to) 16 samples and their grid, written as they are
  produced.
- Under ``torch.distributed``: one ``scores.rank<r>.jsonl`` per process instead of
  ``scores.jsonl`` (see :func:`run_benchmark`).

``compare_methods`` puts several ``metrics.json`` side by side in one markdown table and one CSV.

Invalid scores: a non-finite score (NaN, +-inf) and the release's failure sentinel ``-10`` (its
unified reward server returns -10 when a scorer fails on a sample) are dropped from the summary;
``count`` is the number of valid scores that remain.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from rtdmd.utils.rng import stream_seed

INVALID_SENTINEL = -10.0
GRID_SIZE = 16
SCORES_FILE = 'scores.jsonl'
METRICS_FILE = 'metrics.json'

Generate = Callable[[list[str], list[int]], Tensor]


def sample_seed(seed: int, index: int) -> int:
    """The generation seed of prompt ``index`` under run seed ``seed``."""
    return stream_seed('benchmark', seed, index)


class SettingsMismatchError(ValueError):
    """``scores.jsonl`` in ``out_dir`` was written with other settings than the current run's."""


def valid_scores(values: Sequence[float | None] | np.ndarray | Tensor) -> np.ndarray:
    """The finite scores of ``values`` other than the -10 failure sentinel (``None`` = invalid)."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    flat = np.ravel(np.asarray(values, dtype=object))
    arr = np.asarray([np.nan if v is None else v for v in flat], dtype=np.float64)
    return arr[np.isfinite(arr) & (arr != INVALID_SENTINEL)]


def bootstrap_ci(values: Sequence[float] | np.ndarray | Tensor, num_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` ``(N,)``; invalid scores dropped.

    ``scipy.stats.bootstrap`` (percentile method) with ``num_resamples`` resamples of size N
    drawn with replacement from a generator seeded by ``seed``, so the interval is
    reproducible. ``(nan, nan)`` for no valid value; a single value is its own interval.
    """
    from scipy.stats import bootstrap

    x = valid_scores(values)
    n = x.size
    if n == 0:
        return float('nan'), float('nan')
    if n == 1:  # scipy refuses a sample of one; every resample is that value
        return float(x[0]), float(x[0])
    # batches of ~4M indices at most (num_resamples x N at once could exhaust memory)
    result = bootstrap((x,), np.mean, n_resamples=num_resamples, confidence_level=confidence,
                       method='percentile', rng=np.random.default_rng(seed), vectorized=True,
                       batch=max(1, min(num_resamples, (1 << 22) // n)))
    low, high = result.confidence_interval
    return float(low), float(high)


def summarize(values: Sequence[float | None] | np.ndarray | Tensor, **bootstrap: Any) -> dict:
    """``dict(mean, std, ci_low, ci_high, count)`` of the valid scores (NaN / inf / -10 dropped).

    ``std`` is the sample standard deviation (ddof=1; 0 for a single value); ``bootstrap`` goes to
    :func:`bootstrap_ci`. With no valid score (e.g. a per-tag figure of a tag the prompts lack)
    the statistics are ``None`` (``null`` in JSON) and ``count`` is 0.
    """
    x = valid_scores(values)
    if not x.size:
        return dict(mean=None, std=None, ci_low=None, ci_high=None, count=0)
    low, high = bootstrap_ci(x, **bootstrap)
    return dict(mean=float(x.mean()), std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
                ci_low=low, ci_high=high, count=int(x.size))


def _jsonable(obj: Any) -> Any:
    """``obj`` after a JSON round trip (tuples -> lists): recorded and current settings compare."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _run_settings(settings: Mapping[str, Any], seeds: Sequence[int], batch_size: int,
                  scorers: Mapping[str, Any], prompts: Sequence[dict]) -> dict:
    texts = json.dumps([p['prompt'] for p in prompts]).encode()
    # batch_size is recorded: generators that seed their noise per batch (distillers' generate)
    # give other images for another grouping of the prompts
    return _jsonable(dict(settings, seeds=list(seeds), batch_size=batch_size,
                          rewards=sorted(scorers),
                          num_prompts=len(prompts),
                          prompts_sha1=hashlib.sha1(texts).hexdigest()))


def _load_scores(path: Path, settings: dict, repair: bool = True) -> dict[tuple[int, int], dict]:
    """Finished records of ``path`` keyed by (index, seed); refuses other settings.

    A line cut short by an interruption is dropped; with ``repair`` (the process's own file) the
    file is rewritten without it, so appends stay well-formed. A missing own file is created
    with the settings header.
    """
    if not path.exists():
        if repair:
            path.write_text(json.dumps({'_settings': settings}) + '\n')
        return {}
    lines = path.read_text().splitlines()
    try:
        recorded = json.loads(lines[0])['_settings']
    except (IndexError, ValueError, KeyError, TypeError) as err:
        raise SettingsMismatchError(f'{path}: no settings header; remove the file or use '
                                    'another out_dir') from err
    if recorded != settings:
        keys = sorted(k for k in set(recorded) | set(settings)
                      if recorded.get(k) != settings.get(k))
        diffs = '; '.join(f'{k}: recorded {recorded.get(k)!r}, now {settings.get(k)!r}'
                          for k in keys)
        raise SettingsMismatchError(f'{path} was written with other settings ({diffs}); resume '
                                    'with the same settings, or use another out_dir')
    done, good = {}, [lines[0]]
    for line in lines[1:]:
        try:
            rec = json.loads(line)
            done[(int(rec['index']), int(rec['seed']))] = rec
            good.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if repair and (len(good) != len(lines) or not path.read_text().endswith('\n')):
        path.write_text('\n'.join(good) + '\n')
    return done


def _load_all_scores(out_dir: Path, settings: dict, own: Path | None
                     ) -> dict[tuple[int, int], dict]:
    """The records of every ``scores*.jsonl`` in ``out_dir`` (one file per process of the runs
    that wrote them); only ``own`` is created or repaired."""
    paths = set(out_dir.glob('scores*.jsonl')) | ({own} if own is not None else set())
    done: dict[tuple[int, int], dict] = {}
    for path in sorted(paths):
        done.update(_load_scores(path, settings, repair=path == own))
    return done


def _write_grid(out_dir: Path, grid_jobs: list[tuple[int, int]],
                records: Mapping[tuple[int, int], dict]) -> None:
    """``grid.png`` from the saved ``samples/`` of the first jobs (those present so far), each
    captioned with its prompt, seed and first reward's score (from ``records``)."""
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    from rtdmd.engine.hooks.visualization import figure_to_array, image_grid_figure
    from rtdmd.utils.atomic import atomic_write_bytes

    found = [(job, out_dir / 'samples' / f'{job[0]:05d}_seed{job[1]}.png') for job in grid_jobs]
    found = [(job, f) for job, f in found if f.exists() and job in records]
    if not found:
        return
    images = torch.stack([to_tensor(Image.open(f).convert('RGB')) for _, f in found])
    captions = [_caption(records[job]) for job, _ in found]
    image = figure_to_array(image_grid_figure(images, captions, out_dir.name))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='png')
    atomic_write_bytes(str(out_dir / 'grid.png'), buffer.getvalue())


def _caption(record: dict) -> str:
    """``prompt (seed s)``, then a line with the first reward and its score."""
    name, score = next(iter(record['scores'].items()), (None, None))
    value = '-' if score is None else f'{score:.3f}'
    return f"{record['prompt']} (seed {record['seed']})" + (f'\n{name} {value}' if name else '')


def _score_batch(scorers: Mapping[str, Any], images: Tensor, texts: list[str],
                 metas: list[dict]) -> dict[str, list[float | None]]:
    """``{reward name (or name/extra figure): per-sample scores}``; non-finite -> ``None``."""
    out = {}
    with torch.no_grad():
        for name, scorer in scorers.items():
            details = (scorer.score_details(images, texts, metas)
                       if hasattr(scorer, 'score_details') else {'': scorer(images, texts, metas)})
            for key, s in details.items():
                full = f'{name}/{key}' if key else name
                s = s.detach().double().cpu()
                if s.shape != (len(texts),):
                    raise ValueError(f'reward {full!r} returned shape {tuple(s.shape)}, '
                                     f'expected ({len(texts)},)')
                out[full] = [float(v) if np.isfinite(v) else None for v in s.tolist()]
    return out


def run_benchmark(generate: Generate, scorers: Mapping[str, Any], prompts: Sequence[dict],
                  out_dir: str | Path, *, seeds: Sequence[int] = (42,), batch_size: int = 8,
                  settings: Mapping[str, Any] | None = None,
                  progress_file: TextIO | None = None) -> dict:
    """Generate and score every (prompt, seed), resumably; write the metrics; return them.

    Under ``torch.distributed`` every process takes every ``world_size``-th pending sample and
    appends to its own ``scores.rank<r>.jsonl``; the metrics are computed from all files once
    every process is done (rank 0 writes them). A run resumes from the files of earlier runs
    whatever their number of processes.


    Args:
        generate: ``generate(prompts, sample_seeds) -> (B, 3, H, W)`` images in [0, 1], one
            seed per prompt (:func:`sample_seed`). For a resumed run to reproduce an
            uninterrupted one exactly, each image must depend on its prompt and seed only.
        scorers: ``{name: RewardScorer}``; called as ``scorer(images, prompts, metadata)``.
        prompts: ``[{'prompt': str, 'metadata': dict}, ...]``, the full prompt set.
        out_dir: where ``scores.jsonl``, ``metrics.json``, ``samples/`` and ``grid.png`` go.
        seeds: every prompt is generated once per seed.
        batch_size: prompts per ``generate`` call; recorded with the settings.
        settings: the fixed sampling settings (steps, cfg scale, resolution, checkpoint, ...),
            recorded in ``scores.jsonl`` and ``metrics.json`` together with the seeds, batch
            size, reward names and a hash of the prompt texts; a resume must match them all.
        progress_file: where the tqdm progress bar goes (default: stderr); rank 0 only.

    Returns:
        ``{reward: summarize(...), '_settings': {...}}`` as written to ``metrics.json``.
    """
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f'seeds must be non-empty and distinct, got {list(seeds)}')
    from mmengine.dist import barrier, get_dist_info

    rank, world = get_dist_info()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_settings = _run_settings(settings or {}, seeds, batch_size, scorers, prompts)
    scores_path = out_dir / (SCORES_FILE if world == 1 else f'scores.rank{rank}.jsonl')
    done = _load_all_scores(out_dir, run_settings, own=scores_path)
    barrier()  # every process has read the files before any appends

    jobs = [(i, s) for s in seeds for i in range(len(prompts))]
    grid_jobs = jobs[:GRID_SIZE]
    mine = [job for job in jobs if job not in done][rank::world]
    shares = {seed: [i for i, s in mine if s == seed] for seed in seeds}
    # one process: all samples, resumed ones counted; several: rank 0 reports its own share
    total, already = ((len(jobs), sum(job in done for job in jobs)) if world == 1
                      else (sum(len(v) for v in shares.values()), 0))
    progress = tqdm(total=total, initial=already, unit='sample', desc=f'[benchmark] {out_dir.name}',
                    file=progress_file or sys.stderr, disable=rank != 0, dynamic_ncols=True)
    try:
        for seed in seeds:
            for start in range(0, len(shares[seed]), batch_size):
                idx = shares[seed][start:start + batch_size]
                records, images = _generate_batch(generate, scorers, prompts, idx, seed)
                with scores_path.open('a') as f:
                    for rec in records:
                        done[(rec['index'], seed)] = rec
                        f.write(json.dumps(rec) + '\n')
                # one process: the grid grows as samples come; several: rank 0 draws it at the end
                _save_grid_samples(out_dir, images, idx, seed, grid_jobs,
                                   done if world == 1 else None)
                progress.update(len(idx))
    finally:
        progress.close()

    if world > 1:
        barrier()  # every share is written
        done = _load_all_scores(out_dir, run_settings, own=None)
    missing = [job for job in jobs if job not in done]
    if missing:
        raise RuntimeError(f'{out_dir}: {len(missing)} samples have no scores, e.g. {missing[:3]}')
    records = [done[job] for job in jobs]  # job order, so the bootstrap is order-stable
    names = list(dict.fromkeys(k for r in records for k in r['scores']))
    metrics = {name: summarize([r['scores'].get(name) for r in records]) for name in names}
    metrics['_settings'] = run_settings
    if rank == 0:
        _write_grid(out_dir, grid_jobs, done)
        (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + '\n')
    return metrics


def _generate_batch(generate: Generate, scorers: Mapping[str, Any], prompts: Sequence[dict],
                    idx: list[int], seed: int) -> tuple[list[dict], Tensor]:
    """Generate and score prompts ``idx`` under run seed ``seed``: the records to append and
    the images (on the CPU)."""
    texts = [prompts[i]['prompt'] for i in idx]
    metas = [dict(prompts[i].get('metadata') or {}) for i in idx]
    seeds_i = [sample_seed(seed, i) for i in idx]
    # scored where they were made (rewards run on the generator's device), saved on CPU
    images = generate(texts, seeds_i).detach().float().clamp(0, 1)
    if images.ndim != 4 or images.shape[0] != len(idx) or images.shape[1] != 3:
        raise ValueError(f'generate returned shape {tuple(images.shape)}, expected '
                         f'({len(idx)}, 3, H, W)')
    scores = _score_batch(scorers, images, texts, metas)
    return [dict(index=i, seed=seed, sample_seed=seeds_i[k], prompt=texts[k],
                 scores={name: v[k] for name, v in scores.items()})
            for k, i in enumerate(idx)], images.cpu()


def _save_grid_samples(out_dir: Path, images: Tensor, idx: list[int], seed: int,
                       grid_jobs: list[tuple[int, int]],
                       records: Mapping[tuple[int, int], dict] | None) -> None:
    """Save the grid's samples among ``idx``; redraw ``grid.png`` if ``records`` are given."""
    from torchvision.utils import save_image

    wanted = set(grid_jobs)
    hits = [(k, i) for k, i in enumerate(idx) if (i, seed) in wanted]
    if not hits:
        return
    (out_dir / 'samples').mkdir(exist_ok=True)
    for k, i in hits:
        save_image(images[k], out_dir / 'samples' / f'{i:05d}_seed{seed}.png')
    if records is not None:
        _write_grid(out_dir, grid_jobs, records)


def compare_methods(results: Mapping[str, Mapping[str, Any]],
                    out_dir: str | Path | None = None) -> tuple[str, str]:
    """One row per method: markdown ``mean ± half CI width`` per reward, and a numeric CSV.

    Args:
        results: ``{method: metrics}`` (``metrics.json`` contents, or a path to one).
        out_dir: if given, ``comparison.md`` and ``comparison.csv`` are written there.

    Returns:
        ``(markdown, csv)``. A reward a method lacks, or one without a valid score, shows as ``-``
        (markdown) / empty (CSV).
    """
    from tabulate import tabulate

    loaded = {m: json.loads(Path(r).read_text()) if isinstance(r, str | Path) else r
              for m, r in results.items()}
    rewards: list[str] = []
    for metrics in loaded.values():
        rewards += [k for k in metrics if not k.startswith('_') and k not in rewards]

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    fields = ('mean', 'std', 'ci_low', 'ci_high', 'count')
    writer.writerow(['method'] + [f'{r}_{f}' for r in rewards for f in fields])
    md = []
    for method, metrics in loaded.items():
        cells, row = [], [method]
        for r in rewards:
            s = metrics.get(r)
            if s is None or not s.get('count'):
                cells.append('-')
                row += [''] * len(fields)
                continue
            half = (s['ci_high'] - s['ci_low']) / 2
            cells.append(f"{s['mean']:.4f} ± {half:.4f}")
            row += [s[f] for f in fields]
        md.append([method, *cells])
        writer.writerow(row)
    markdown = tabulate(md, headers=['method', *rewards], tablefmt='github', disable_numparse=True)
    table, table_csv = markdown + '\n', buf.getvalue()
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / 'comparison.md').write_text(table)
        (out_dir / 'comparison.csv').write_text(table_csv)
    return table, table_csv


__all__ = ['INVALID_SENTINEL', 'SettingsMismatchError', 'bootstrap_ci', 'compare_methods',
           'run_benchmark', 'sample_seed', 'summarize', 'valid_scores']
