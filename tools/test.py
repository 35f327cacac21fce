"""Evaluate a model: its config's own test (``metrics.json``), or the benchmark harness.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...]
    python tools/test.py CONFIG --checkpoint CKPT ...     (the same)
    python tools/test.py CONFIG --untrained ...           (the untrained model, on purpose)

A single-model config needs a checkpoint (or ``load_from`` in the config): evaluating the
untrained model by accident would overwrite ``metrics.json`` with meaningless figures. A config
with ``stages`` evaluates its trained stages and needs none.

Benchmarks (image models; the suites and rewards are the config's ``benchmark`` section):

    python tools/test.py CONFIG --benchmarks [SUITE ...|all] [--checkpoint CKPT]
        [--models student teacher pipeline] [--pipeline DIR] [--stage NAME] [--no-ema]
        [--teacher-steps N] [--teacher-guidance G] [--seeds 42 43 ...] [--max-prompts N]
        [--batch-size B] [--name KIND=NAME ...] [--compare NAME=DIR ...] [--out DIR]

Each method's scores, metrics (mean, std, 95% bootstrap interval, count) and image grids go
under ``<work_dir>/benchmarks/<method>/<suite>/``; ``results.md`` / ``results.csv`` there put
every evaluated method side by side. An interrupted evaluation resumes where it stopped. Several
processes (``bash tools/dist_test.sh CONFIG NPROC --benchmarks ...``) share every suite.
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from rtdmd.cli import LazyDictAction  # noqa: E402  (light: parse before heavy imports)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Evaluate an rtdmd model.')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint_pos', nargs='?', metavar='CHECKPOINT',
                        help='checkpoint to evaluate (same as --checkpoint)')
    parser.add_argument('--checkpoint', help='checkpoint to evaluate (default: the config\'s '
                        'load_from)')
    parser.add_argument('--untrained', action='store_true',
                        help='evaluate the untrained model on purpose (no checkpoint)')
    parser.add_argument('--work-dir', help='where metrics.json goes '
                        '(default: the training work dir for a pipeline of stages, '
                        'else its test/ folder)')
    parser.add_argument('--cfg-options', nargs='+', action=LazyDictAction, default={})
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    bench = parser.add_argument_group('benchmarks')
    bench.add_argument('--benchmarks', nargs='*', metavar='SUITE',
                       help='run the benchmark harness on these suites of the config\'s '
                       'benchmark section (none named: its default_suites; "all": every suite)')
    bench.add_argument('--models', nargs='+', choices=['student', 'teacher', 'pipeline'],
                       help='what to evaluate (default: student, or pipeline with --pipeline)')
    bench.add_argument('--pipeline', help='a folder written by tools/export.py')
    bench.add_argument('--stage', help='for a config with stages: the stage evaluated '
                       '(default: the last)')
    bench.add_argument('--no-ema', action='store_true',
                       help='sample with the live generator weights instead of their EMA')
    bench.add_argument('--teacher-steps', type=int, help='Euler steps of the teacher')
    bench.add_argument('--teacher-guidance', type=float, help='CFG scale of the teacher')
    bench.add_argument('--seeds', type=int, nargs='+', help='run seeds (default: the config\'s)')
    bench.add_argument('--max-prompts', type=int,
                       help='first N prompts of each suite (default: all; the release used 64)')
    bench.add_argument('--batch-size', type=int, help='prompts per generation batch')
    bench.add_argument('--name', nargs='+', default=[], metavar='KIND=NAME',
                       help='method names in the results table, e.g. student=rtdmd_iter1000')
    bench.add_argument('--compare', nargs='+', default=[], metavar='NAME=DIR',
                       help='earlier method folders (or metrics.json) to add to the table')
    bench.add_argument('--out', help='results folder (default: <work_dir>/benchmarks)')
    bench.add_argument('--device', help='default: cuda when available, else cpu')
    args = parser.parse_args(argv)
    if args.checkpoint_pos and args.checkpoint and args.checkpoint_pos != args.checkpoint:
        parser.error(f'two checkpoints given: {args.checkpoint_pos} and --checkpoint '
                     f'{args.checkpoint}')
    args.checkpoint = args.checkpoint or args.checkpoint_pos
    if args.untrained and args.checkpoint:
        parser.error('--untrained evaluates the model without a checkpoint; drop one of them')
    if args.max_prompts is not None and args.max_prompts < 1:
        parser.error(f'--max-prompts must be >= 1 (0 leaves nothing to evaluate), got '
                     f'{args.max_prompts}')
    return args


def check_checkpoint_given(cfg, args: argparse.Namespace) -> None:
    """A single model is evaluated from a checkpoint unless --untrained says otherwise."""
    if cfg.get('stages') or args.untrained or args.checkpoint or cfg.get('load_from'):
        return
    if args.benchmarks is not None and 'student' not in (args.models or ['student']):
        return  # teacher / exported pipeline only: no student weights needed
    raise FileNotFoundError(
        'no checkpoint to evaluate: pass it (tools/test.py CONFIG CHECKPOINT, or --checkpoint '
        'CKPT); to evaluate the untrained model on purpose, pass --untrained')


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or not key or not value:
            sys.exit(f'error: {flag} takes KEY=VALUE pairs, got {item!r}')
        pairs[key] = value
    return pairs


def benchmark_request(args: argparse.Namespace):
    from rtdmd.apis.benchmarks import BenchmarkRequest

    models = args.models or (['pipeline'] if args.pipeline else ['student'])
    req = BenchmarkRequest(
        suites=list(args.benchmarks), models=models, checkpoint=args.checkpoint,
        pipeline=args.pipeline, stage=args.stage, use_ema=not args.no_ema,
        teacher_steps=args.teacher_steps, teacher_guidance=args.teacher_guidance,
        seeds=args.seeds, batch_size=args.batch_size, max_prompts=args.max_prompts,
        method_names=_pairs(args.name, '--name'), compare=_pairs(args.compare, '--compare'),
        out_root=args.out)
    if args.device:
        req.device = args.device
    return req


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)  # before the heavy imports: --help and usage errors are instant
    from rtdmd.apis.pipeline import check_pipeline
    from rtdmd.apis.stages import default_work_dir, split_stage_options
    from rtdmd.utils.config import ConfigError, load_config
    from rtdmd.utils.mmengine_compat import apply_mmengine_patches, dist_timeout, init_distributed

    apply_mmengine_patches()
    try:
        cfg = load_config(args.config, split_stage_options(args.cfg_options)[0])
        check_checkpoint_given(cfg, args)
        timeout = dist_timeout(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        sys.exit(f'error: checkpoint {args.checkpoint} does not exist')
    cfg.launcher = args.launcher
    # A pipeline evaluates the stages trained in its own work dir; a single model gets test/.
    default = default_work_dir(args.config)
    cfg.work_dir = args.work_dir or (default if cfg.get('stages') else osp.join(default, 'test'))
    try:
        check_pipeline(cfg, args.cfg_options)
    except (ConfigError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')
    if args.benchmarks is not None:
        from rtdmd.apis.benchmarks import check_request, run_benchmarks
        from rtdmd.datasets.text_prompts import PromptFileError
        from rtdmd.evaluation.benchmark import SettingsMismatchError
        req = benchmark_request(args)
        try:
            check_request(cfg, req)  # the request, the suites, the checkpoint path
        except (ValueError, FileNotFoundError) as err:
            sys.exit(f'error: {err}')
        init_distributed(args.launcher, timeout_s=timeout)  # a share of every suite
        try:
            run_benchmarks(cfg, req, args.cfg_options)
        except (FileNotFoundError, SettingsMismatchError, PromptFileError) as err:
            # missing model / reward weights or checkpoint, a resume with other settings, a bad
            # prompt file: each message says what to do
            sys.exit(f'error: {err}')
        return
    init_distributed(args.launcher, timeout_s=timeout)

    from rtdmd.apis.pipeline import run_test
    from rtdmd.utils.checkpoint_io import CheckpointReadError
    try:
        run_test(cfg, args.checkpoint, args.cfg_options)
    except (CheckpointReadError, FileNotFoundError) as err:  # corrupt, unsafe or missing
        sys.exit(f'error: {err}')


if __name__ == '__main__':
    main()
