"""Time ``train_step`` and count the FLOPs of one generator forward for a config.

    python tools/profile_step.py CONFIG [--iters N] [--warmup W] [--device cpu|cuda]
                                     [--cfg-options k=v ...]

The config is validated as by tools/train.py; model, optimizer wrappers and train dataloader are
built without a Runner (nothing is written). Printed: seconds per ``train_step`` (mean and std
after W warm-up iterations; the generator updates only every ``fake_update_ratio`` of them, so
the mean mixes both kinds), samples/s (a stage-2 step's samples are prompts x K), peak
memory (CUDA ``max_memory_allocated``, else the max
RSS of the process, build included), parameters per role, and the FLOPs of one generator forward
at the config's batch size from fvcore (1 multiply-add = 1 flop) and from torch's
``FlopCounterMode`` (1 multiply-add = 2 flops), with the ops fvcore skipped.
"""

from __future__ import annotations

import argparse
import math
import os.path as osp
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from rtdmd.cli import LazyDictAction  # noqa: E402  (light: parse before heavy imports)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from rtdmd.models.backbones.base import Backbone, Condition


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Time, memory and FLOPs of one rtdmd training step.')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--iters', type=int, default=20, help='timed iterations')
    parser.add_argument('--warmup', type=int, default=5, help='untimed iterations first')
    parser.add_argument('--device', choices=['cpu', 'cuda'],
                        help='default: cuda where available, else cpu')
    parser.add_argument('--cfg-options', nargs='+', action=LazyDictAction, default={})
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        parser.error('need --iters >= 1 and --warmup >= 0')
    import torch  # after the arguments: --help and argument errors are instant

    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda but CUDA is not available')
    return args


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle of ``aten::scaled_dot_product_attention`` (fvcore counts none), in mult-adds.

    ``Q K^T`` and ``P V`` take ``B H Lq Lk (D + Dv)`` multiply-adds: ``2 B H Lq Lk D`` for
    ``Dv = D``, i.e. the usual ``4 B H Lq Lk D`` flops at 2 flops per multiply-add.
    """
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    return int(math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1]))


def generator_forward(backbone: Backbone, cond: Condition) -> nn.Module:
    """``backbone.predict_velocity('generator', x, sigma, cond)`` as a module of tensor-only
    arguments (what fvcore traces). Defined here, not at the top, so that ``--help`` does not
    import torch."""
    from torch import Tensor, nn

    class GeneratorForward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.keys = [k for k, v in cond.items() if isinstance(v, Tensor)]
            self.tensors = [cond[k] for k in self.keys]
            self.constants = {k: v for k, v in cond.items() if not isinstance(v, Tensor)}

        def forward(self, x: Tensor, sigma: Tensor, *values: Tensor) -> Tensor:
            kwargs = dict(self.constants, **dict(zip(self.keys, values, strict=True)))
            return self.backbone.predict_velocity('generator', x, sigma, kwargs)

    return GeneratorForward()


def generator_flops(model: nn.Module, data: Any) -> tuple[int, int, dict[str, int]]:
    """``(fvcore multiply-adds, FlopCounterMode flops, ops fvcore skipped)`` of one forward."""
    import torch
    from fvcore.nn import FlopCountAnalysis
    from torch.utils.flop_counter import FlopCounterMode

    prompts, device = model.data_preprocessor(data, False)['prompt'], model.iteration.device
    wrapper = generator_forward(model.backbone, model.backbone.encode_prompts(prompts))
    x = torch.randn((len(prompts), *model.backbone.latent_shape()), device=device)
    inputs = (x, torch.ones(len(prompts), device=device), *wrapper.tensors)
    with torch.no_grad():
        analysis = FlopCountAnalysis(wrapper, inputs)
        analysis.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.tracer_warnings('none')
        with FlopCounterMode(display=False) as counter:
            wrapper(*inputs)
        return int(analysis.total()), int(counter.get_total_flops()), dict(
            analysis.unsupported_ops())


def time_train_steps(model: nn.Module, optim_wrapper: Any, batches: Iterator[Any], iters: int,
                     warmup: int, device: torch.device) -> list[float]:
    """Seconds of each of ``iters`` ``train_step`` calls after ``warmup`` untimed ones.

    Timed by hand rather than with ``torch.utils.benchmark.Timer``: each step consumes a batch
    and updates the model, and the tool reports the spread over exactly ``iters`` steps after
    exactly ``warmup``; Timer's ``timeit`` adds its own warm-up calls and returns one mean, its
    ``blocked_autorange`` chooses the number of steps by time, and it would run the step with
    one thread unless told otherwise. The CUDA synchronisation it would add is done here.
    """
    import torch

    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    model.train()
    times = []
    for i in range(warmup + iters):
        data = next(batches)
        sync()
        start = time.perf_counter()
        model.train_step(data, optim_wrapper)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def peak_memory(device: torch.device) -> tuple[str, float]:
    """``(label, MiB)``: CUDA's peak allocation, or the process's max RSS (build included)."""
    import torch

    if device.type == 'cuda':
        return 'peak memory (MiB, CUDA max allocated)', torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is in KiB on Linux.
    return ('peak memory (MiB, process max RSS)',
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from rtdmd.models.backbones.base import ROLES
    from rtdmd.utils.config import ConfigError, load_config
    from rtdmd.utils.mmengine_compat import apply_mmengine_patches
    from rtdmd.utils.setup_env import register_all_modules

    apply_mmengine_patches()
    try:
        cfg = load_config(args.config, args.cfg_options)
    except (ConfigError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')
    register_all_modules()
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner

    from rtdmd.registry import MODELS

    device = torch.device(args.device)
    model = MODELS.build(cfg.model).to(device)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    loader = Runner.build_dataloader(cfg.train_dataloader,
                                     seed=cfg.get('randomness', {}).get('seed'))
    batches = chain.from_iterable(repeat(loader))  # a finite sampler restarts
    first = next(batches)
    prompts = len(model.data_preprocessor(first, False)['prompt'])
    # A stage-2 step generates group_size (K) samples per prompt: those are its samples.
    batch_size = prompts * int(getattr(model, 'group_size', 1))
    times = time_train_steps(model, optim_wrapper, batches, args.iters, args.warmup, device)
    memory = peak_memory(device)
    model.eval()
    fv_macs, torch_flops, skipped = generator_flops(model, first)
    mean = statistics.fmean(times)
    rows = [('train_step seconds (mean)', f'{mean:.6f}'),
            ('train_step seconds (std)', f'{statistics.stdev(times) if len(times) > 1 else 0:.6f}'),
            ('samples / s', f'{batch_size / mean:.1f}'), (memory[0], f'{memory[1]:.1f}')]
    for role in ROLES:
        params = list(getattr(model.backbone, role).parameters())
        rows.append((f'params {role} (total / trainable)', f'{sum(p.numel() for p in params)} / '
                     f'{sum(p.numel() for p in params if p.requires_grad)}'))
    rows += [('generator forward flops, fvcore (1 mult-add = 1 flop)', str(fv_macs)),
             ('generator forward flops, FlopCounterMode (1 mult-add = 2)', str(torch_flops)),
             ('ops fvcore did not count',
              ', '.join(f'{k} x{n}' for k, n in sorted(skipped.items())) or '-')]
    width = max(len(name) for name, _ in rows)
    print(f'benchmark of {args.config} on {device.type}: batch {batch_size}, '
          f'{args.iters} iterations after {args.warmup} warm-up\n' + '-' * (width + 20))
    for name, value in rows:
        print(f'{name:<{width}}  {value}')


if __name__ == '__main__':
    main()
