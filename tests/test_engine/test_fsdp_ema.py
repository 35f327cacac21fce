"""Validation and test under FSDP: TrainableEMAHook swaps the EMA into sharded parameters.

Two forked gloo ranks train the toy AC-DMD config through the real Runner (``run_training``)
under DDP and under FSDP (``DistillerFullyShard``: the toy networks are one unit each), then
validate and test it. The EMA lags the live weights, and the toy metric tells the two apart, so
equal metrics under both engines show the EMA (not the live shards) was evaluated, and the swap
back leaves the live weights exactly as they were.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from rtdmd.utils.sharding import full_tensor
from tests.conftest import TINY_TOY_OPTIONS
from tests.ranks import free_port, start_ranks
from tests.test_tools.test_fsdp_resume import _train_tool

CONFIG = 'configs/ac_dmd/toy2d_4step.py'
ENGINES = {'ddp': [], 'fsdp': ['model_wrapper_cfg.type=rtdmd.DistillerFullyShard']}


def _generator(runner) -> dict[str, torch.Tensor]:
    """The generator's trainable weights, whole (a sharded one gathers: every rank calls it)."""
    net = runner.model.module.backbone.generator
    return {n: full_tensor(p.detach()).clone() for n, p in net.named_parameters()
            if p.requires_grad}


def _evaluate(runner) -> dict:
    """Metrics of val and test with the EMA (the hook's swap), and of val with the live weights,
    the live weights, the EMA, and the weights after all of it."""
    from rtdmd.engine.hooks import TrainableEMAHook

    hook = next(h for h in runner.hooks if isinstance(h, TrainableEMAHook))
    out = dict(live=_generator(runner), ema=hook.full_checkpoint_state(runner)['ema_state'],
               val=runner.val(), test=runner.test())
    hook.swap(runner)  # the hook's swap before val then puts the live weights back in
    out['val_live'] = runner.val()
    hook.swap(runner)
    out['after'] = _generator(runner)
    return out


def _worker(rank: int, port: int, root: str) -> None:
    from rtdmd.apis.pipeline import run_training

    torch.set_num_threads(1)
    tool = _train_tool()
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE='2')
    dist.init_process_group('gloo', rank=rank, world_size=2)
    results = {}
    try:
        for engine, options in ENGINES.items():
            args = tool.parse_args([CONFIG, '--work-dir', str(Path(root) / engine), '--launcher',
                                    'pytorch', '--cfg-options', *TINY_TOY_OPTIONS,
                                    'train_cfg.max_iters=4', 'train_cfg.val_interval=4',
                                    'model.fake_update_ratio=1', *options])
            runner = run_training(tool.build_cfg(args), args.cfg_options)
            if engine == 'fsdp':
                net = runner.model.module.backbone.generator
                assert type(net).__name__.startswith('FSDP'), type(net)
            results[engine] = _evaluate(runner)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        torch.save(results, Path(root) / 'results.pt')


@pytest.fixture(scope='module')
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import rtdmd.apis.pipeline  # noqa: F401  (imported here once: forked ranks inherit it)
    from rtdmd.utils.setup_env import register_all_modules

    register_all_modules()
    root = tmp_path_factory.mktemp('fsdp_ema')
    start_ranks(_worker, (free_port(), str(root)))
    return torch.load(root / 'results.pt')


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.slow
def test_val_and_test_evaluate_the_ema_under_fsdp(runs: dict) -> None:
    ddp, fsdp = runs['ddp'], runs['fsdp']
    # the EMA lags the live weights, and the metric sees the difference
    lag = max(float((ddp['live'][k] - ddp['ema'][k]).abs().max()) for k in ddp['live'])
    assert lag > 1e-3, lag
    assert abs(ddp['val']['toy/sw2_teacher'] - ddp['val_live']['toy/sw2_teacher']) > 1e-3
    _close(fsdp['live'], ddp['live'])
    _close(fsdp['ema'], ddp['ema'])
    for phase in ('val', 'test', 'val_live'):
        assert fsdp[phase].keys() == ddp[phase].keys() and fsdp[phase]
        for key, value in ddp[phase].items():
            assert fsdp[phase][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (phase, key)


@pytest.mark.slow
def test_the_swap_back_restores_the_live_shards_exactly(runs: dict) -> None:
    for engine in ENGINES:
        live, after = runs[engine]['live'], runs[engine]['after']
        assert live.keys() == after.keys() and live
        assert all(torch.equal(live[k], after[k]) for k in live), engine
