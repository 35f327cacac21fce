"""Kill a two-stage toy pipeline at random moments, resume it, and check nothing was lost.

    python tools/chaos.py [--kills 50] [--seed 0] [--work-dir DIR] [--max-keep 1]

The pipeline is stage 1 (AC-DMD) then stage 2 (RTDMD started from it) on a tiny analytic world.
One uninterrupted reference run is timed first. Each trial then starts a fresh run and SIGKILLs
it one to three times -- at a uniformly random moment of the reference's duration, or (one kill
in four) during a randomly chosen checkpoint, record or ``last_checkpoint`` write or right
before a checkpoint's rename -- resuming with ``--resume`` after each kill, and finally lets it
finish. A trial *survived* when every resume ran and the run finished; it is *identical* when
both stages' final checkpoints verify and equal the reference's in every weight, optimizer and
EMA tensor; otherwise its work is *lost*. The report goes to stdout and ``<work-dir>/chaos.json``.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import random
import shutil
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout

OPTIONS = [
    'backbone.init_fit.iters=20', 'backbone.init_fit.batch_size=64', 'backbone.hidden_dim=32',
    '*:train_cfg.max_iters=6', '*:default_hooks.checkpoint.interval=2',
    '*:default_hooks.logger.interval=2', '*:train_dataloader.batch_size=4',
    'ac_dmd:model.fake_update_ratio=2', 'model.group_size=4', '*:val_cfg=None',
    '*:val_dataloader=None', '*:val_evaluator=None',
]
STAGES = ('ac_dmd', 'rtdmd')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Random kills of a toy pipeline.')
    parser.add_argument('--kills', type=int, default=50, help='at least this many kills')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work-dir', default=osp.join('work_dirs', 'chaos'))
    parser.add_argument('--max-keep', type=int, default=1, help='max_keep_ckpts of the runs')
    return parser.parse_args(argv)


def write_leaf(work_dir: str) -> str:
    leaf = osp.join(work_dir, 'pipeline.py')
    with open(leaf, 'w') as f:
        f.write(f"_base_ = ['{ROOT}/configs/rtdmd/toy2d_4step.py']\n"
                f"stages = [dict(name='ac_dmd', config='{ROOT}/configs/ac_dmd/toy2d_4step.py'),"
                f"\n          dict(name='rtdmd', init_from='ac_dmd')]\nevaluation = None\n")
    return leaf


def random_write_fault(rng: random.Random):
    from rtdmd.testing.faults import ReplaceFault, WriteFault

    stage, it = rng.choice(STAGES), rng.choice([2, 4, 6])
    kind = rng.choice(['checkpoint', 'record', 'last_checkpoint', 'rename'])
    if kind == 'rename':
        return ReplaceFault(f'{stage}/iter_{it}.pth'), kind
    match = {'checkpoint': f'{stage}/.iter_{it}.pth.', 'record': f'{stage}/.iter_{it}.pth.json',
             'last_checkpoint': f'{stage}/.last_checkpoint'}[kind]
    nth = it // 2 if kind == 'last_checkpoint' else 1
    return WriteFault(match, nth, fraction=rng.random()), kind


def trial(main, leaf: str, work: str, options: list[str], rng: random.Random, duration: float,
          ref: str) -> dict:
    """One run killed 1-3 times, resumed after each kill, then finished."""
    from rtdmd.testing.faults import compare_checkpoints, run_forked
    from rtdmd.utils.checkpoint_io import verify_checkpoint

    kills, kinds, phases, flags, survived = 0, [], [], [], True
    for _ in range(rng.randint(1, 3)):
        argv = [leaf, '--work-dir', work, *flags, '--cfg-options', *options]
        if rng.random() < 0.25:
            fault, kind = random_write_fault(rng)
            result = run_forked(main, argv, work + '.log', faults=[fault])
        else:
            kind = 'timer'
            result = run_forked(main, argv, work + '.log', kill_after_s=rng.uniform(0, duration))
        flags = ['--resume']
        if result.killed:
            kills += 1
            kinds.append(kind)
            phases.append(phase(result.log))
        elif result.exitcode != 0:
            survived = False
            break
    if survived:
        argv = [leaf, '--work-dir', work, '--resume', '--cfg-options', *options]
        survived = run_forked(main, argv, work + '.log').exitcode == 0
    identical = survived
    for stage in STAGES if survived else ():
        final = osp.join(work, stage, 'iter_6.pth')
        try:
            verify_checkpoint(final)
            identical &= compare_checkpoints(osp.join(ref, stage, 'iter_6.pth'), final) == []
        except Exception:  # noqa: BLE001  (any failure to read the result means it is lost)
            identical = False
    return dict(kills=kills, kinds=kinds, phases=phases, survived=survived, identical=identical)


def phase(log: str) -> str:
    """Where a killed run was: the stage it was in (from its log), or 'startup'."""
    started = [s for s in STAGES if f'stage {s}: training in' in log]
    return started[-1] if started else 'startup'



def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault('RTDMD_CACHE', osp.join(osp.abspath(args.work_dir), 'cache'))
    import rtdmd.apis.pipeline  # noqa: F401  (everything imported once, before forking)
    from rtdmd.testing.faults import load_train_main, run_forked
    from rtdmd.utils.atomic import atomic_write_json
    from rtdmd.utils.setup_env import register_all_modules

    register_all_modules()
    shutil.rmtree(args.work_dir, ignore_errors=True)
    os.makedirs(args.work_dir)
    leaf, train_main = write_leaf(args.work_dir), load_train_main()
    options = OPTIONS + [f'*:default_hooks.checkpoint.max_keep_ckpts={args.max_keep}']
    ref = osp.join(args.work_dir, 'reference')
    start = time.perf_counter()
    result = run_forked(train_main, [leaf, '--work-dir', ref, '--cfg-options', *options],
                        ref + '.log')
    duration = time.perf_counter() - start
    if result.exitcode != 0:
        sys.exit(f'error: the reference run failed:\n{result.log[-3000:]}')
    print(f'reference run: {duration:.1f} s', flush=True)
    rng, trials = random.Random(args.seed), []
    while sum(t['kills'] for t in trials) < args.kills:
        work = osp.join(args.work_dir, f'trial_{len(trials):03d}')
        trials.append(trial(train_main, leaf, work, options, rng, duration, ref))
        t = trials[-1]
        print(f'trial {len(trials)}: {t["kills"]} kill(s) {t["kinds"]} in {t["phases"]}: '
              f'{"identical" if t["identical"] else "survived" if t["survived"] else "LOST"}',
              flush=True)
        if t['identical']:
            shutil.rmtree(work)
    report = summarise(trials)
    atomic_write_json(osp.join(args.work_dir, 'chaos.json'), dict(report, trials=trials))
    print(' '.join(f'{k}={v}' for k, v in report.items()))
    sys.exit(0 if report['lost'] == 0 else 1)


def _count(trials: list[dict], key: str) -> str:
    counts: dict[str, int] = {}
    for t in trials:
        for value in t[key]:
            counts[value] = counts.get(value, 0) + 1
    return ','.join(f'{k}:{v}' for k, v in sorted(counts.items()))


def summarise(trials: list[dict]) -> dict:
    return dict(trial_count=len(trials), kills=sum(t['kills'] for t in trials),
                survived=sum(t['survived'] for t in trials),
                identical=sum(t['identical'] for t in trials),
                lost=sum(not t['identical'] for t in trials),
                kills_by_kind=_count(trials, 'kinds'), kills_by_stage=_count(trials, 'phases'))


if __name__ == '__main__':
    main()
