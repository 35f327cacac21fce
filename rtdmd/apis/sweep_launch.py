"""How the points of a sweep start: one process, torchrun on GPUS processes, or a Slurm array.

``tools/sweep.py`` runs a point's tools (train, then test) under a :class:`Launch` prefix:

- no ``--gpus``: one plain process per tool (points may run ``--jobs`` at a time);
- ``--gpus N`` (what ``tools/dist_train.sh SWEEP N`` passes): ``torchrun`` with N processes per
  node, points one after another, honouring ``NNODES``, ``NODE_RANK``, ``MASTER_ADDR``, ``PORT``
  as ``tools/dist_train.sh`` does;
- ``--slurm PARTITION`` (what ``tools/slurm_train.sh`` passes for a sweep file): one
  ``sbatch --array`` job, a task per unfinished point, each running ``tools/sweep.py --point K``
  inside its allocation (``srun`` starts the point's tasks, ``--launcher slurm``), then one job
  that waits for the array (``--dependency=afterany``) and writes the table and plot.
"""

from __future__ import annotations

import math
import os
import os.path as osp
import shlex
import sys
from dataclasses import dataclass, field

SWEEP_TOOL = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools',
                      'sweep.py')
#: Filled in by sbatch for an array task; expands inside the job's shell.
ARRAY_TASK = '"$SLURM_ARRAY_TASK_ID"'


@dataclass(frozen=True)
class Launch:
    """The command prefix of a point's tools and the ``--launcher`` they get.

    Args:
        gpus: processes per node under torchrun (0: one plain process).
        slurm: inside a Slurm allocation: ``srun`` starts the allocation's tasks.
        srun_args: extra ``srun`` options (``SRUN_ARGS``), split like a shell would.
        env: where ``NNODES``, ``NODE_RANK``, ``MASTER_ADDR``, ``PORT`` are read (default the
            process environment).
    """

    gpus: int = 0
    slurm: bool = False
    srun_args: str = ''
    env: dict = field(default_factory=lambda: dict(os.environ))

    @property
    def launcher(self) -> str:
        return 'slurm' if self.slurm else 'pytorch' if self.gpus else 'none'

    def prefix(self) -> list[str]:
        """What a tool's path and arguments follow."""
        if self.slurm:
            return ['srun', '--kill-on-bad-exit=1', *shlex.split(self.srun_args),
                    sys.executable, '-u']
        if not self.gpus:
            return [sys.executable]
        env = self.env
        port = env.get('PORT', env.get('MASTER_PORT', '29500'))
        return [sys.executable, '-m', 'torch.distributed.run',
                f'--nnodes={env.get("NNODES", "1")}', f'--node_rank={env.get("NODE_RANK", "0")}',
                f'--nproc_per_node={self.gpus}',
                f'--master_addr={env.get("MASTER_ADDR", "127.0.0.1")}', f'--master_port={port}']

    def tool_args(self) -> list[str]:
        """Arguments every tool gets after its config."""
        return [] if self.launcher == 'none' else ['--launcher', self.launcher]


@dataclass(frozen=True)
class SlurmArray:
    """A sweep's grid as one Slurm job array (``tools/slurm_train.sh`` settings).

    Args:
        partition: ``-p``.
        job_name: the array's name; the table job is ``<job_name>-table``.
        gpus: GPUs (tasks) per point.
        gpus_per_node: GPUs per node; a point spans ``ceil(gpus / gpus_per_node)`` nodes.
        cpus_per_task: CPU cores per task.
        srun_args: extra ``srun`` options for the points' tasks.
    """

    partition: str
    job_name: str
    gpus: int = 8
    gpus_per_node: int = 8
    cpus_per_task: int = 8
    srun_args: str = ''

    def array_command(self, sweep_file: str, work_dir: str, indices: list[int],
                      tool_options: list[str]) -> list[str]:
        """``sbatch --array`` of the points ``indices`` (0-based, grid order)."""
        per_node = min(self.gpus, self.gpus_per_node)
        task = [sys.executable, '-u', SWEEP_TOOL, sweep_file, '--work-dir', work_dir,
                '--srun-args=' + self.srun_args, *tool_options]
        return ['sbatch', '--parsable', '-p', self.partition, f'--job-name={self.job_name}',
                f'--array={",".join(map(str, indices))}',
                f'--nodes={math.ceil(self.gpus / per_node)}', f'--ntasks={self.gpus}',
                f'--ntasks-per-node={per_node}', f'--gres=gpu:{per_node}',
                f'--cpus-per-task={self.cpus_per_task}',
                f'--output={osp.join(work_dir, "slurm", "%A_%a.out")}',
                '--wrap', f'{shlex.join(task)} --point {ARRAY_TASK}']

    def table_command(self, sweep_file: str, work_dir: str, array_job: str,
                      tool_options: list[str]) -> list[str]:
        """The job that writes the table and plot once every array task has ended."""
        task = [sys.executable, '-u', SWEEP_TOOL, sweep_file, '--work-dir', work_dir,
                '--collect', *tool_options]
        return ['sbatch', '--parsable', '-p', self.partition,
                f'--job-name={self.job_name}-table', f'--dependency=afterany:{array_job}',
                '--ntasks=1', '--cpus-per-task=1',
                f'--output={osp.join(work_dir, "slurm", "table_%j.out")}',
                '--wrap', shlex.join(task)]
