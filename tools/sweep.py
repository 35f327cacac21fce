"""Run an ablation grid: every point of a sweep file through tools/train.py, then one table.

    python tools/sweep.py SWEEP_CONFIG [--work-dir DIR] [--jobs N] [--dry-run]
                                       [--cfg-options k=v ...]
    bash tools/dist_train.sh SWEEP_CONFIG GPUS [...]       # = --gpus GPUS: torchrun per point
    bash tools/slurm_train.sh PARTITION JOB SWEEP_CONFIG [WORK_DIR] [...]  # = --slurm: job array

Every point's config is loaded and validated (pipeline stages included) before anything runs or
is submitted (a Slurm array task validates its own point only).
A point trains in ``<work_dir>/<axis>=<value>,...`` with its output in ``sweep.log`` there; a
single-stage config is then evaluated by tools/test.py. A point whose metrics file exists is
skipped, so a crashed sweep continues where it stopped. The table of all points goes to
``<work_dir>/results.{md,csv,png}``; the exit code is 1 if any point failed. Progress lines
``point k/N: name`` say which point of the grid runs (``rtdmd/apis/sweep_launch.py``: how).
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout

# The standard library only until the arguments are parsed (--help answers at once); the
# sweep's modules (mmengine, and torch for the configs' validation) are imported where used.
from rtdmd.apis.sweep_launch import Launch, SlurmArray  # noqa: E402

if TYPE_CHECKING:
    from rtdmd.apis import sweep as grid

CHECKPOINT = '<last checkpoint>'  # filled in once the point has trained


class DictOptions(argparse.Action):
    """mmengine's ``DictAction`` (the parsing train.py applies to the same options), imported
    only when the option is given."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: list[str], option_string: str | None = None) -> None:
        from mmengine.config import DictAction

        DictAction(self.option_strings, self.dest)(parser, namespace, values, option_string)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Run an ablation grid of rtdmd experiments.')
    parser.add_argument('sweep', help='sweep file (a Python config with a `sweep` dict)')
    parser.add_argument('--work-dir', help='default: work_dirs/<sweep path below configs/>')
    parser.add_argument('--jobs', type=int, default=1, help='points run at a time')
    parser.add_argument('--dry-run', action='store_true', help='print the commands only')
    parser.add_argument('--cfg-options', nargs='+', action=DictOptions, default={},
                        help="options for every point, over the sweep's own cfg_options")
    parser.add_argument('--gpus', type=int, default=0,
                        help='run every point on this many processes per node (torchrun; '
                        'NNODES, NODE_RANK, MASTER_ADDR, PORT as tools/dist_train.sh), one '
                        'point after another')
    slurm = parser.add_argument_group('Slurm (tools/slurm_train.sh sets these)')
    slurm.add_argument('--slurm', metavar='PARTITION',
                       help='submit the unfinished points as one sbatch job array, and a job '
                       'that writes the table after them')
    slurm.add_argument('--job-name', default='rtdmd-sweep')
    slurm.add_argument('--gpus-per-node', type=int, default=8)
    slurm.add_argument('--cpus-per-task', type=int, default=8)
    slurm.add_argument('--srun-args', default='', help='extra srun options (SRUN_ARGS)')
    slurm.add_argument('--point', type=int, help=argparse.SUPPRESS)  # an array task: point K
    slurm.add_argument('--collect', action='store_true', help=argparse.SUPPRESS)  # table only
    args = parser.parse_args(argv)
    if args.slurm and not args.gpus:
        args.gpus = 8
    return args


def tool(name: str) -> str:
    return osp.relpath(osp.join(ROOT, 'tools', name))


def commands(job: grid.Job, config: str, launch: Launch | None = None) -> list[list[str]]:
    """train.py (resuming an interrupted single-stage run), then test.py for a single stage,
    each under ``launch`` (one process by default)."""
    from rtdmd.apis import sweep as grid

    launch = launch or Launch()
    options = ['--cfg-options', *grid.format_options(job.options)] if job.options else []
    train = [*launch.prefix(), tool('train.py'), config, *launch.tool_args(), '--work-dir',
             job.work_dir]
    if job.pipeline:  # --resume: the pipeline skips finished stages, resumes interrupted ones
        return [train + ['--resume'] + options]
    last = osp.join(job.work_dir, 'last_checkpoint')
    trained = ''
    if osp.isfile(last):
        with open(last) as f:
            trained = f.read().strip()
        train.append('--resume')
    cmds = [] if trained.endswith(f'iter_{job.max_iters}.pth') else [train + options]
    test = [*launch.prefix(), tool('test.py'), config, *launch.tool_args(), '--checkpoint',
            CHECKPOINT, '--work-dir', job.work_dir]
    return cmds + [test + options]


def show(cmd: list[str], job: grid.Job) -> str:
    last = f'"$(cat {shlex.quote(osp.join(job.work_dir, "last_checkpoint"))})"'
    return ' '.join(last if a == CHECKPOINT else shlex.quote(a) for a in cmd)


def run_job(job: grid.Job, config: str, env: dict, launch: Launch | None = None) -> bool:
    """Run a point's commands into its ``sweep.log``; True if its metrics file appeared."""
    from rtdmd.apis import sweep as grid
    from rtdmd.apis.stages import latest_checkpoint

    os.makedirs(job.work_dir, exist_ok=True)
    with open(osp.join(job.work_dir, 'sweep.log'), 'a') as log:
        for cmd in commands(job, config, *([launch] if launch else [])):
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


def launch_of(args: argparse.Namespace) -> Launch | None:
    """The points' launch: srun inside an array task, torchrun with --gpus, else one process."""
    if args.point is not None:
        return Launch(slurm=True, srun_args=args.srun_args)
    return Launch(gpus=args.gpus) if args.gpus else None


def submit(args: argparse.Namespace, jobs: list[grid.Job], done: set[str],
           work_dir: str) -> int:
    """Submit the unfinished points as one job array and the table job after it (with
    --dry-run: print both sbatch commands)."""
    from rtdmd.apis import sweep as grid

    array = SlurmArray(args.slurm, args.job_name, args.gpus, args.gpus_per_node,
                       args.cpus_per_task, args.srun_args)
    options = ['--cfg-options', *grid.format_options(args.cfg_options)] if args.cfg_options \
        else []
    todo = [k for k, job in enumerate(jobs) if job.point.name not in done]
    for k, job in enumerate(jobs):
        state = 'finished earlier, skipped' if k not in todo else f'array task {k}'
        print(f'point {k + 1}/{len(jobs)}: {job.point.name}: {state}, in {job.work_dir}')
    if not todo:
        print('every point has finished; nothing to submit')
        return 0
    first = array.array_command(args.sweep, work_dir, todo, options)
    if args.dry_run:
        print(shlex.join(first[:-1]), shlex.quote(first[-1]))
        print(shlex.join(array.table_command(args.sweep, work_dir, '<array job id>', options)))
        return 0
    os.makedirs(osp.join(work_dir, 'slurm'), exist_ok=True)
    job_id = subprocess.run(first, check=True, capture_output=True,
                            text=True).stdout.strip().split(';')[0]
    table = subprocess.run(array.table_command(args.sweep, work_dir, job_id, options),
                           check=True, capture_output=True, text=True).stdout.strip()
    print(f'submitted job array {job_id} ({len(todo)} points) and table job {table}; logs in '
          f'{osp.join(work_dir, "slurm")}')
    return 0


def run_points(args: argparse.Namespace, jobs: list[grid.Job], done: set[str], config: str,
               first: int = 0, total: int | None = None) -> list[str]:
    """Run the unfinished points (``--jobs`` at a time); return the logs of failed ones.
    ``jobs`` are the grid's points ``first``, ``first + 1``, ... of ``total`` (default all)."""
    from tqdm import tqdm

    env = dict(os.environ)
    if args.jobs > 1:  # share the cores between the concurrent points
        env.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // args.jobs)))
    index = {job.point.name: k for k, job in enumerate(jobs, first + 1)}
    total = total or len(jobs)
    for name in sorted(done, key=index.get):
        print(f'{name}: finished earlier, skipped', flush=True)
    failed = []
    launch = launch_of(args)
    todo = [job for job in jobs if job.point.name not in done]
    bar = tqdm(total=len(todo), desc='sweep', unit='point', file=sys.stderr, disable=None)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        def start(job: grid.Job) -> bool:  # in the worker: lines in the order things happen
            bar.write(f'point {index[job.point.name]}/{total}: {job.point.name} (log in '
                      f'{job.work_dir}/sweep.log)', file=sys.stdout)
            sys.stdout.flush()
            ok = run_job(job, config, env, launch)
            log = osp.join(job.work_dir, 'sweep.log')
            bar.write(f'{job.point.name}: ' + ('done' if ok else f'FAILED, see {log}'),
                      file=sys.stdout)
            sys.stdout.flush()
            bar.update()
            return ok

        futures = {pool.submit(start, job): job for job in todo}
        for future in as_completed(futures):
            job = futures[future]
            failed += [] if future.result() else [osp.join(job.work_dir, 'sweep.log')]
    bar.close()
    return failed


def write_table(sweep: grid.Sweep, jobs: list[grid.Job], work_dir: str) -> None:
    from rtdmd.apis import sweep as grid

    results = {j.point.name: grid.read_metrics(grid.metrics_file(j))
               for j in jobs if osp.isfile(grid.metrics_file(j))}
    try:
        rows = grid.collect(sweep, results)
    except grid.SweepError as err:
        sys.exit(f'error: {err}')
    os.makedirs(work_dir, exist_ok=True)
    print(grid.write_results(work_dir, sweep, rows), end='')
    print(f'results written to {osp.join(work_dir, "results.md")} (.csv, .png)')


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rtdmd.apis import sweep as grid
    from rtdmd.apis.stages import default_work_dir

    work_dir = args.work_dir or default_work_dir(args.sweep)
    try:
        sweep = grid.load_sweep(args.sweep)
        points = sweep.points()
        first = 0
        if args.point is not None:  # one array task: that point only, the table job after
            if not 0 <= args.point < len(points):
                raise grid.SweepError(f'--point {args.point}: the grid has points 0 to '
                                      f'{len(points) - 1}')
            first = args.point
        jobs = grid.plan_jobs(sweep, work_dir, {**sweep.cfg_options, **args.cfg_options},
                              points if args.point is None else [points[first]])
    except grid.SweepError as err:
        sys.exit(f'error: {err}')
    config = osp.relpath(sweep.config)
    done = {j.point.name for j in jobs if osp.isfile(grid.metrics_file(j))}
    if args.slurm:
        return submit(args, jobs, done, work_dir)
    if args.dry_run:
        for k, job in enumerate(jobs, first + 1):
            print(f'# point {k}/{len(points)}: {job.point.name}' + (
                ': finished earlier, skipped' if job.point.name in done else ''))
            print('\n'.join(show(cmd, job) for cmd in commands(job, config, launch_of(args))))
        return 0
    failed = [] if args.collect else run_points(args, jobs, done, config, first,
                                                   len(points))
    if args.point is not None:
        return 1 if failed else 0
    if int(os.environ.get('NODE_RANK', '0')) == 0:  # one node of a multi-node sweep writes
        write_table(sweep, jobs, work_dir)
    if failed:
        print(f'{len(failed)} point(s) failed:\n' + '\n'.join(f'  {log}' for log in failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
