"""Run an ablation grid: every point of a sweep file through tools/train.py, then one table.

    python tools/sweep.py SWEEP_CONFIG [--work-dir DIR] [--jobs N] [--dry-run]
                                       [--cfg-options k=v ...]

Every point's config is loaded and validated (pipeline stages included) before anything runs.
A point trains in ``<work_dir>/<axis>=<value>,...`` with its output in ``sweep.log`` there; a
single-stage config is then evaluated by tools/test.py. A point whose metrics file exists is
skipped, so a crashed sweep continues where it stopped. The table of all points goes to
``<work_dir>/results.{md,csv,png}``; the exit code is 1 if any point failed.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed

from mmengine.config import DictAction

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout

from rtdmd.apis import sweep as grid  # noqa: E402
from rtdmd.apis.stages import default_work_dir  # noqa: E402

CHECKPOINT = '<last checkpoint>'  # filled in once the point has trained


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Run an ablation grid of rtdmd experiments.')
    parser.add_argument('sweep', help='sweep file (a Python config with a `sweep` dict)')
    parser.add_argument('--work-dir', help='default: work_dirs/<sweep path below configs/>')
    parser.add_argument('--jobs', type=int, default=1, help='points run at a time')
    parser.add_argument('--dry-run', action='store_true', help='print the commands only')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help="options for every point, over the sweep's own cfg_options")
    return parser.parse_args(argv)


def tool(name: str) -> str:
    return osp.relpath(osp.join(ROOT, 'tools', name))


def commands(job: grid.Job, config: str) -> list[list[str]]:
    """train.py (resuming an interrupted single-stage run), then test.py for a single stage."""
    options = ['--cfg-options', *grid.format_options(job.options)] if job.options else []
    train = [sys.executable, tool('train.py'), config, '--work-dir', job.work_dir]
    if job.pipeline:  # --resume: the pipeline skips finished stages, resumes interrupted ones
        return [train + ['--resume'] + options]
    last = osp.join(job.work_dir, 'last_checkpoint')
    trained = ''
    if osp.isfile(last):
        with open(last) as f:
            trained = f.read().strip()
        train.append('--resume')
    cmds = [] if trained.endswith(f'iter_{job.max_iters}.pth') else [train + options]
    test = [sys.executable, tool('test.py'), config, '--checkpoint', CHECKPOINT, '--work-dir',
            job.work_dir]
    return cmds + [test + options]


def show(cmd: list[str], job: grid.Job) -> str:
    last = f'"$(cat {shlex.quote(osp.join(job.work_dir, "last_checkpoint"))})"'
    return ' '.join(last if a == CHECKPOINT else shlex.quote(a) for a in cmd)


def run_job(job: grid.Job, config: str, env: dict) -> bool:
    """Run a point's commands into its ``sweep.log``; True if its metrics file appeared."""
    from rtdmd.apis.stages import latest_checkpoint

    os.makedirs(job.work_dir, exist_ok=True)
    print(f'{job.point.name}: running, log in {job.work_dir}/sweep.log', flush=True)
    with open(osp.join(job.work_dir, 'sweep.log'), 'a') as log:
        for cmd in commands(job, config):
            try:
                cmd = [latest_checkpoint(job.work_dir) if a == CHECKPOINT else a for a in cmd]
            except FileNotFoundError as err:
                log.write(f'error: {err}\n')
                return False
            log.write(f'$ {shlex.join(cmd)}\n')
            log.flush()
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode:
                return False
    return osp.isfile(grid.metrics_file(job))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = args.work_dir or default_work_dir(args.sweep)
    try:
        sweep = grid.load_sweep(args.sweep)
        jobs = grid.plan_jobs(sweep, work_dir, {**sweep.cfg_options, **args.cfg_options})
    except grid.SweepError as err:
        sys.exit(f'error: {err}')
    config = osp.relpath(sweep.config)
    done = {j.point.name for j in jobs if osp.isfile(grid.metrics_file(j))}
    if args.dry_run:
        for job in jobs:
            print(f'# {job.point.name}' + (': finished earlier, skipped' if
                                             job.point.name in done else ''))
            print('\n'.join(show(cmd, job) for cmd in commands(job, config)))
        return 0
    env = dict(os.environ)
    if args.jobs > 1:  # share the cores between the concurrent points
        env.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // args.jobs)))
    for name in sorted(done):
        print(f'{name}: finished earlier, skipped', flush=True)
    failed = []
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {pool.submit(run_job, job, config, env): job
                   for job in jobs if job.point.name not in done}
        for future in as_completed(futures):
            job = futures[future]
            log = osp.join(job.work_dir, 'sweep.log')
            ok = future.result()
            print(f'{job.point.name}: ' + ('done' if ok else f'FAILED, see {log}'), flush=True)
            failed += [] if ok else [log]
    results = {j.point.name: grid.read_metrics(grid.metrics_file(j))
               for j in jobs if osp.isfile(grid.metrics_file(j))}
    try:
        rows = grid.collect(sweep, results)
    except grid.SweepError as err:
        sys.exit(f'error: {err}')
    os.makedirs(work_dir, exist_ok=True)
    print(grid.write_results(work_dir, sweep, rows), end='')
    print(f'results written to {osp.join(work_dir, "results.md")} (.csv, .png)')
    if failed:
        print(f'{len(failed)} point(s) failed:\n' + '\n'.join(f'  {log}' for log in failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
