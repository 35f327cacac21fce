"""Benchmark suites: which rewards score which prompt set, for one or several methods.

The ``benchmark`` section of a config (``configs/_base_/evaluation/benchmarks.py`` holds the
release's protocol, ALGORITHM.md 5.2)::

    benchmark = dict(
        rewards=dict(clipscore=dict(type='CLIPScore'), ocr=dict(type='OCRReward'), ...),
        suites=dict(
            drawbench=dict(prompts='drawbench', rewards=['clipscore', ...]),
            ocr=dict(prompts='ocr', rewards=['ocr'])),
        default_suites=['drawbench', 'ocr'],   # what runs without --benchmarks
        seeds=[42], batch_size=4, max_prompts=None,
        teacher=dict(steps=50, guidance_scale=None))  # None: the model's teacher_guidance

``prompts`` is a shipped benchmark name (``rtdmd.datasets.text_prompts.BENCHMARKS``, validated
by that benchmark's rules) or a prompt file path; ``file`` optionally replaces a named
benchmark's shipped file. Every reward is built once and shared by the suites that use it.

Layout of the results (``out_root`` = ``<work_dir>/benchmarks``)::

    <out_root>/<method>/<suite>/scores.jsonl, metrics.json, grid.png, samples/
    <out_root>/<method>/metrics.json     {"<suite>/<reward>": summary, ..., "_settings": {...}}
    <out_root>/results.md, results.csv   every method found under out_root, side by side
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from rtdmd.evaluation.benchmark import METRICS_FILE, compare_methods, run_benchmark
from rtdmd.utils.atomic import atomic_write_json, atomic_write_text

BENCHMARK_KEYS = frozenset({'rewards', 'suites', 'default_suites', 'seeds', 'batch_size',
                            'max_prompts', 'teacher'})
SUITE_KEYS = frozenset({'prompts', 'file', 'rewards'})
TEACHER_KEYS = frozenset({'steps', 'guidance_scale'})
RESULTS_MD, RESULTS_CSV = 'results.md', 'results.csv'


class BenchmarkConfigError(ValueError):
    """The ``benchmark`` config section is malformed."""


def check_benchmark_config(bench: Mapping[str, Any], suites: Sequence[str] | None = None) -> None:
    """Validate the section (and the chosen ``suites``) before anything is built or sampled."""
    from rtdmd.datasets.text_prompts import BENCHMARKS

    errors = []
    unknown = set(bench) - BENCHMARK_KEYS
    if unknown:
        errors.append(f'benchmark: unknown keys {sorted(unknown)}; allowed: '
                      f'{sorted(BENCHMARK_KEYS)}')
    rewards, all_suites = bench.get('rewards') or {}, bench.get('suites') or {}
    if not all_suites:
        errors.append('benchmark.suites is empty: name at least one '
                      "suite=dict(prompts=<benchmark or file>, rewards=[<reward>, ...])")
    for name, suite in all_suites.items():
        where = f'benchmark.suites.{name}'
        if not isinstance(suite, Mapping):
            errors.append(f'{where}: expected dict(prompts=..., rewards=[...]), got {suite!r}')
            continue
        if set(suite) - SUITE_KEYS:
            errors.append(f'{where}: unknown keys {sorted(set(suite) - SUITE_KEYS)}; allowed: '
                          f'{sorted(SUITE_KEYS)}')
        prompts = suite.get('prompts')
        if not isinstance(prompts, str) or not prompts:
            errors.append(f'{where}.prompts: a benchmark name ({sorted(BENCHMARKS)}) or a '
                          f'prompt file path, got {prompts!r}')
        elif suite.get('file') and prompts not in BENCHMARKS:
            errors.append(f'{where}.file replaces a named benchmark\'s file, but {prompts!r} '
                          f'is not one of {sorted(BENCHMARKS)}')
        names = suite.get('rewards')
        if not names or not isinstance(names, (list, tuple)):
            errors.append(f'{where}.rewards: a non-empty list of names in benchmark.rewards')
            continue
        missing = [r for r in names if r not in rewards]
        if missing:
            errors.append(f'{where}.rewards: {missing} not in benchmark.rewards '
                          f'({sorted(rewards)})')
    for name in suites or []:
        if name not in all_suites:
            errors.append(f'benchmark suite {name!r} is not defined; the config defines '
                          f'{sorted(all_suites)}')
    max_prompts = bench.get('max_prompts')
    if max_prompts is not None and (isinstance(max_prompts, bool) or not isinstance(
            max_prompts, int) or max_prompts < 1):
        errors.append(f'benchmark.max_prompts: None (all prompts) or an int >= 1, got '
                      f'{max_prompts!r} (0 leaves nothing to sample)')
    seeds = bench.get('seeds', [42])
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
        errors.append(f'benchmark.seeds: a non-empty list of distinct ints, got {seeds!r}')
    if set(bench.get('teacher') or {}) - TEACHER_KEYS:
        errors.append(f'benchmark.teacher: unknown keys '
                      f'{sorted(set(bench["teacher"]) - TEACHER_KEYS)}; allowed: '
                      f'{sorted(TEACHER_KEYS)}')
    if errors:
        raise BenchmarkConfigError('\n'.join(errors))


def suite_prompts(suite: Mapping[str, Any], max_prompts: int | None = None) -> list[dict]:
    """The suite's validated prompt items (the first ``max_prompts`` when given, >= 1)."""
    from rtdmd.datasets.text_prompts import (
        BENCHMARKS,
        check_max_prompts,
        load_benchmark,
        read_prompt_file,
    )

    check_max_prompts(max_prompts)
    if suite['prompts'] in BENCHMARKS:
        return load_benchmark(suite['prompts'], max_prompts, path=suite.get('file'))
    return read_prompt_file(suite['prompts'])[:max_prompts]


class SuiteScorers:
    """The reward models of one suite at a time: memory holds a suite's rewards, not all nine.

    ``get(names)`` builds the named rewards of ``bench['rewards']`` (frozen, on ``device``) and
    releases the built ones the new suite does not use; rewards shared by consecutive suites (or
    methods) are kept.
    """

    def __init__(self, bench: Mapping[str, Any], device: Any = 'cpu') -> None:
        self.bench, self.device = bench, device
        self.built: dict[str, nn.Module] = {}

    def get(self, names: Sequence[str]) -> dict[str, nn.Module]:
        import rtdmd.rewards  # noqa: F401  (registers the scorers)
        from rtdmd.registry import REWARDS

        for name in [n for n in self.built if n not in names]:
            del self.built[name]
        release_memory()
        for name in names:
            if name not in self.built:
                scorer = REWARDS.build(dict(self.bench['rewards'][name]))
                self.built[name] = scorer.to(self.device).eval().requires_grad_(False)
        return {name: self.built[name] for name in names}


def release_memory() -> None:
    """Free what dropped models held (Python objects, then the CUDA cache)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_suite_weights(bench: Mapping[str, Any], suites: Sequence[str]) -> None:
    """Every reward of ``suites`` finds its weight files (no model is built); all missing ones
    are named at once."""
    from rtdmd.rewards.weights import check_all_reward_weights

    names = dict.fromkeys(r for s in suites for r in bench['suites'][s]['rewards'])
    check_all_reward_weights(bench['rewards'][name] for name in names)


def method_slug(name: str) -> str:
    """A folder name for a method name (letters, digits, ``._-``)."""
    slug = re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_')
    if not slug:
        raise ValueError(f'method name {name!r} has no usable character')
    return slug


def evaluate_method(generate: Callable, settings: Mapping[str, Any], bench: Mapping[str, Any],
                    suites: Sequence[str], out_dir: str | Path,
                    scorers: SuiteScorers, *, seeds: Sequence[int] | None = None,
                    batch_size: int | None = None, max_prompts: int | None = None,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every suite for one method; write and return its flat ``metrics.json``.

    Args:
        generate: ``generate(prompts, seeds) -> (B, 3, H, W)`` in [0, 1] (a
            :mod:`rtdmd.evaluation.generators` object).
        settings: the method's fixed sampling settings (recorded, checked on resume).
        suites: names in ``bench['suites']``.
        out_dir: the method's folder (``<out_root>/<method>``).
        scorers: builds each suite's rewards when its turn comes.
        seeds, batch_size, max_prompts: override the section's values.
        log: sink of one line per suite (its progress bar goes to stderr).
    """
    out_dir = Path(out_dir)
    seeds = list(seeds or bench.get('seeds') or [42])
    batch_size = int(batch_size or bench.get('batch_size') or 4)
    max_prompts = max_prompts if max_prompts is not None else bench.get('max_prompts')
    flat: dict[str, Any] = {}
    recorded: dict[str, Any] = {}
    for suite_name in suites:
        suite = bench['suites'][suite_name]
        prompts = suite_prompts(suite, max_prompts)
        suite_settings = dict(settings, suite=suite_name, prompts=suite['prompts'],
                              max_prompts=max_prompts)
        if log is not None:
            log(f'[benchmark] {out_dir.name} / {suite_name}: {len(prompts)} prompts x '
                f'{len(seeds)} seeds, rewards {list(suite["rewards"])}')
        metrics = run_benchmark(generate, scorers.get(suite['rewards']), prompts,
                                out_dir / suite_name, seeds=seeds, batch_size=batch_size,
                                settings=suite_settings)
        recorded[suite_name] = metrics.pop('_settings')
        flat.update({f'{suite_name}/{key}': value for key, value in metrics.items()})
    merged = _read_json(out_dir / METRICS_FILE)  # earlier suites of this method stay
    merged.update(flat)
    merged['_settings'] = dict(merged.get('_settings') or {}, **recorded)
    if _is_main_process():
        _write_json(out_dir / METRICS_FILE, merged)
    return merged


def _is_main_process() -> bool:
    from mmengine.dist import is_main_process
    return is_main_process()


def write_results(out_root: str | Path, extra: Mapping[str, str | Path] | None = None
                  ) -> tuple[str, str]:
    """``results.md`` / ``results.csv`` in ``out_root``: every method folder side by side.

    Args:
        out_root: holds ``<method>/metrics.json`` folders (written by :func:`evaluate_method`).
        extra: more ``{method: folder or metrics.json}`` to include (``--compare``).

    Columns are ``<suite>/<reward>``, shortened to ``<reward>`` where that is unambiguous.
    """
    out_root = Path(out_root)
    methods: dict[str, dict] = {}
    for folder in sorted(p for p in out_root.iterdir() if (p / METRICS_FILE).is_file()):
        methods[folder.name] = _read_json(folder / METRICS_FILE)
    for name, path in (extra or {}).items():
        path = Path(path)
        methods[name] = _read_json(path / METRICS_FILE if path.is_dir() else path)
    columns = [k for m in methods.values() for k in m if not k.startswith('_')]
    short = {}
    for column in dict.fromkeys(columns):
        suite, _, rest = column.partition('/')
        clashes = {c for c in columns if c.partition('/')[2] == rest}
        short[column] = rest if len(clashes) == 1 else column
    table = {m: {short[k]: v for k, v in metrics.items() if not k.startswith('_')}
             for m, metrics in methods.items()}
    md, table_csv = compare_methods(table)
    atomic_write_text(str(out_root / RESULTS_MD), md)
    atomic_write_text(str(out_root / RESULTS_CSV), table_csv)
    return md, table_csv


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f'{path} is not valid JSON ({err.msg}); remove it to recompute it from '
                         'the scores.jsonl files next to it') from None


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_json(str(path), obj)  # fsync-ed before the rename, unlike a plain write


__all__ = ['BenchmarkConfigError', 'SuiteScorers', 'check_benchmark_config', 'check_suite_weights',
           'evaluate_method', 'method_slug', 'release_memory', 'suite_prompts', 'write_results']
