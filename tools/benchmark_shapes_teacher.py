"""Time the stages of a shapes-teacher config and extrapolate the whole training.

    python tools/benchmark_shapes_teacher.py configs/teachers/shapes_sd3.py [--threads 1]
                                             [--iters 10] [--warmup 2] [--cfg-options ...]

For each stage of the pipeline config, the stage's model, optimizer wrapper and train dataloader
are built as the Runner builds them (nothing is written; the flow stage gets a random VAE, as its
VAE checkpoint does not exist yet), ``--warmup`` steps run untimed and ``--iters`` timed. Printed
per stage: CPU seconds per step (``time.process_time``: the process's CPU time, all threads,
data loading included) and wall seconds per step, both extrapolated to the stage's
``max_iters``. CPU time is the figure to trust on a shared machine (wall time counts the other
tenants' share); with ``--threads 2`` its ratio to the 1-thread figure is the parallel
efficiency ``e``, and the training takes ``CPU(1 thread) / (2 e)`` wall seconds on 2 free cores.
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys
import time
from itertools import islice

import torch
from mmengine.config import DictAction

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from rtdmd.apis.stages import stage_config  # noqa: E402
from rtdmd.utils.config import load_config  # noqa: E402
from rtdmd.utils.setup_env import register_all_modules  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Time the stages of a shapes-teacher config.')
    parser.add_argument('config', help='a pipeline config (with stages) or a single stage')
    parser.add_argument('--threads', type=int, default=1, help='torch intra-op threads')
    parser.add_argument('--iters', type=int, default=10, help='timed steps per stage')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.threads < 1:
        parser.error('need --iters >= 1, --warmup >= 0 and --threads >= 1')
    return args


def time_stage(cfg, iters: int, warmup: int) -> dict[str, float]:
    """CPU and wall seconds per ``train_step`` of one stage's config (data loading included)."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS
    from mmengine.runner import Runner

    model_cfg = dict(cfg.model)
    model_cfg.pop('init_checkpoint', None)  # the previous stage's checkpoint does not exist yet
    model = MODELS.build(model_cfg)
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    loader = iter(Runner.build_dataloader(cfg.train_dataloader, seed=0))
    for data in islice(loader, warmup):
        model.train_step(data, optim_wrapper)
    cpu, wall = time.process_time(), time.perf_counter()
    for data in islice(loader, iters):
        model.train_step(data, optim_wrapper)
    cpu, wall = (time.process_time() - cpu) / iters, (time.perf_counter() - wall) / iters
    steps = cfg.train_cfg.max_iters
    return dict(cpu_per_step=cpu, wall_per_step=wall, steps=steps, cpu_total=cpu * steps,
                wall_total=wall * steps)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    register_all_modules()
    cfg = load_config(args.config, args.cfg_options)
    cfg.work_dir = cfg.get('work_dir') or '/tmp/benchmark_shapes_teacher'
    stages = ([stage_config(cfg, {k: v for k, v in s.items() if k != 'init_from'})
               for s in cfg.stages] if cfg.get('stages') else [cfg])
    names = [s['name'] for s in cfg.stages] if cfg.get('stages') else ['train']
    total_cpu = 0.0
    print(f'{args.config}: {args.threads} thread(s), {args.iters} timed steps per stage')
    for name, sub in zip(names, stages, strict=True):
        r = time_stage(sub, args.iters, args.warmup)
        total_cpu += r['cpu_total']
        print(f"  {name:6s} {r['steps']:6d} steps  CPU {r['cpu_per_step']:.3f} s/step "
              f"-> {r['cpu_total'] / 60:6.1f} min   wall {r['wall_per_step']:.3f} s/step "
              f"-> {r['wall_total'] / 60:6.1f} min")
    print(f'  total CPU {total_cpu / 60:.1f} min ({args.threads} thread(s))')


if __name__ == '__main__':
    main()
