"""Sweeps on the launchers: dist_train.sh runs a grid with torchrun per point; Slurm job arrays."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rtdmd.apis.sweep_launch import Launch
from tests.conftest import REPO, TINY_TOY_OPTIONS
from tests.ranks import free_port
from tests.test_tools.test_sweep import load_module, write_sweep


def _env(**extra: str) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', **extra)


def test_torchrun_prefix_honours_the_multi_node_variables() -> None:
    launch = Launch(gpus=8, env=dict(NNODES='4', NODE_RANK='2', MASTER_ADDR='10.0.0.1',
                                     PORT='29999'))
    assert launch.prefix()[1:] == [
        '-m', 'torch.distributed.run', '--nnodes=4', '--node_rank=2', '--nproc_per_node=8',
        '--master_addr=10.0.0.1', '--master_port=29999']
    assert launch.tool_args() == ['--launcher', 'pytorch']
    assert Launch().prefix() == [sys.executable] and Launch().tool_args() == []
    slurm = Launch(slurm=True, srun_args='--qos=high --account a')
    assert slurm.prefix()[:4] == ['srun', '--kill-on-bad-exit=1', '--qos=high', '--account']
    assert slurm.tool_args() == ['--launcher', 'slurm']


def test_help_imports_neither_torch_nor_mmengine() -> None:
    """--help answers before the sweep's modules load (torch alone takes seconds)."""
    code = ('import runpy, sys\n'
            'sys.argv = ["tools/sweep.py", "--help"]\n'
            'try:\n'
            '    runpy.run_path("tools/sweep.py", run_name="__main__")\n'
            'except SystemExit:\n'
            '    pass\n'
            'print([m for m in ("torch", "mmengine") if m in sys.modules])\n')
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'usage: sweep.py' in result.stdout and '--slurm PARTITION' in result.stdout
    assert result.stdout.splitlines()[-1] == '[]'


def test_slurm_dry_run_prints_one_array_of_the_unfinished_points(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """tools/slurm_train.sh with a sweep file: one sbatch --array task per unfinished point
    (each its own work dir, GPUS tasks over ceil(GPUS / GPUS_PER_NODE) nodes), then a table
    job after the array; nothing is submitted."""
    spec = write_sweep(tmp_path / 'ratio.py')
    work_dir = tmp_path / 'sweep'
    (work_dir / 'ratio=1').mkdir(parents=True)
    (work_dir / 'ratio=1' / 'metrics.json').write_text(json.dumps({'toy/sw2_teacher': 0.1}))
    result = subprocess.run(
        ['bash', 'tools/slurm_train.sh', 'gpu', 'abl', str(spec), str(work_dir), '--dry-run'],
        cwd=REPO, env=_env(GPUS='16', GPUS_PER_NODE='8', CPUS_PER_TASK='6',
                           SRUN_ARGS='--qos=high'), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert f'point 1/2: ratio=1: finished earlier, skipped, in {work_dir}/ratio=1' in lines
    assert f'point 2/2: ratio=2: array task 1, in {work_dir}/ratio=2' in lines
    array, table = (shlex.split(line) for line in lines if line.startswith('sbatch'))
    assert array[:6] == ['sbatch', '--parsable', '-p', 'gpu', '--job-name=abl', '--array=1']
    assert {'--nodes=2', '--ntasks=16', '--ntasks-per-node=8', '--gres=gpu:8',
            '--cpus-per-task=6'} <= set(array)
    task = array[array.index('--wrap') + 1]
    assert task.endswith('--point "$SLURM_ARRAY_TASK_ID"')
    assert f'--work-dir {work_dir}' in task and '--srun-args=--qos=high' in task
    assert table[table.index('-p') + 1] == 'gpu' and '--dependency=afterany:<array job id>' in table
    assert '--collect' in table[-1]
    # what array task 1 runs (that point alone is validated): srun over its allocation,
    # --launcher slurm, its own work dir
    code = load_module('sweep.py').main([str(spec), '--work-dir', str(work_dir), '--point', '1',
                                         '--srun-args=--qos=high', '--dry-run'])
    out = capsys.readouterr().out
    assert code == 0 and out.splitlines()[0] == '# point 2/2: ratio=2'
    train = next(line for line in out.splitlines() if 'tools/train.py' in line)
    assert train.startswith('srun --kill-on-bad-exit=1 --qos=high ')
    assert '--launcher slurm' in train and f'--work-dir {work_dir}/ratio=2' in train


# A point as small as the sweep allows: 2 iterations, no validation (its metrics come from the
# test run that follows the training).
POINT_OPTIONS = [o for o in TINY_TOY_OPTIONS
                 if not o.startswith(('val_', 'train_cfg.', 'default_hooks.checkpoint.'))] + [
    'train_cfg.max_iters=2', 'default_hooks.checkpoint.interval=2', 'val_cfg=None',
    'val_dataloader=None', 'val_evaluator=None']


@pytest.mark.slow
def test_two_point_sweep_through_dist_train_with_two_processes_each(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """bash tools/dist_train.sh SWEEP 2: each point trains and is tested under torchrun with 2
    gloo processes, one point after the other, with progress lines; then the table. Run again,
    the sweep skips both points; a point whose evaluation is missing is only evaluated again."""
    spec = write_sweep(tmp_path / 'ratio.py', metrics=['toy/sw2_teacher'])
    work_dir = tmp_path / 'sweep'
    args = [str(spec), '--work-dir', str(work_dir), '--cfg-options', *POINT_OPTIONS]
    first = subprocess.run(['bash', 'tools/dist_train.sh', str(spec), '2', *args[1:]], cwd=REPO,
                           env=_env(PORT=str(free_port())), capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert out.index('point 1/2: ratio=1') < out.index('ratio=1: done') < out.index(
        'point 2/2: ratio=2') < out.index('ratio=2: done')
    for name in ('ratio=1', 'ratio=2'):
        log = (work_dir / name / 'sweep.log').read_text()
        assert log.count('torch.distributed.run') == 2 and '--nproc_per_node=2' in log
        assert '--launcher pytorch' in log
        # mmengine's environment report of the train and the test Runner
        assert log.count('Distributed training: True') == 2 and 'GPU number: 2' in log
        assert json.loads((work_dir / name / 'metrics.json').read_text())['toy/sw2_teacher'] > 0
    table = (work_dir / 'results.md').read_text()
    assert table.splitlines()[0] == '| ratio | toy/sw2_teacher |' and table in out
    with open(work_dir / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['ratio'] for r in rows] == ['1', '2'] and all(
        float(r['toy/sw2_teacher']) > 0 for r in rows)
    assert (work_dir / 'results.png').stat().st_size > 1000
    stamps = [(work_dir / n / 'metrics.json').stat().st_mtime_ns for n in ('ratio=1', 'ratio=2')]
    # what dist_train.sh runs a second time (in this process: no point is left to start)
    tool = load_module('sweep.py')
    assert tool.main([*args, '--gpus', '2']) == 0
    again = capsys.readouterr().out
    assert 'ratio=1: finished earlier, skipped' in again
    assert 'ratio=2: finished earlier, skipped' in again and table in again
    assert stamps == [(work_dir / n / 'metrics.json').stat().st_mtime_ns
                      for n in ('ratio=1', 'ratio=2')]  # nothing evaluated again
    (work_dir / 'ratio=2' / 'metrics.json').unlink()  # trained, its evaluation lost
    assert tool.main([*args, '--gpus', '2', '--dry-run']) == 0
    plan = capsys.readouterr().out.split('# point 2/2: ratio=2\n')
    assert plan[0].startswith('# point 1/2: ratio=1: finished earlier, skipped')
    assert 'tools/train.py' not in plan[1] and 'tools/test.py' in plan[1]
    assert f'--checkpoint "$(cat {work_dir}/ratio=2/last_checkpoint)"' in plan[1]
    assert (work_dir / 'ratio=2' / 'last_checkpoint').read_text().strip().endswith('iter_2.pth')
