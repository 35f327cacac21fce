"""NonFiniteGuardOptimWrapper: a non-finite step leaves the optimizer untouched; a finite one is
exactly the plain OptimWrapper's step. The EMA skips what the guard skipped."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapper, OptimWrapperDict
from torch import nn

from rtdmd.engine.hooks.ema import TrainableEMAHook
from rtdmd.engine.hooks.nonfinite import NonFiniteGuardHook
from rtdmd.engine.optim_wrappers import NonFiniteGuardOptimWrapper, iteration_skipped
from rtdmd.utils.errors import TrainingStopped


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


def _wrapper(net: nn.Module, cls=NonFiniteGuardOptimWrapper, lr: float = 1e-2):
    return cls(torch.optim.AdamW(net.parameters(), lr=lr), clip_grad=dict(max_norm=1.0))


def _loss(net: nn.Module, scale: float = 1.0) -> torch.Tensor:
    x = torch.linspace(-1, 1, 12).reshape(4, 3)
    return net(x).pow(2).mean() * scale


def _state(net: nn.Module, wrapper) -> dict:
    return dict(params=copy.deepcopy(net.state_dict()),
                optim=copy.deepcopy(wrapper.optimizer.state_dict()))


def test_finite_steps_equal_the_plain_wrapper() -> None:
    a, b = _net(), _net()
    wa, wb = _wrapper(a), _wrapper(b, OptimWrapper)
    for _ in range(3):
        wa.update_params(_loss(a))
        wb.update_params(_loss(b))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert wa.skipped_steps == 0


@pytest.mark.parametrize('fault', ['nan_loss', 'inf_loss', 'nan_grad', 'nan_lr'])
def test_a_non_finite_step_is_skipped_with_the_optimizer_untouched(fault: str) -> None:
    MessageHub.get_current_instance().update_info('iter', 7)
    net = _net()
    wrapper = _wrapper(net)
    wrapper.update_params(_loss(net))  # one good step: Adam has moments to protect
    before = _state(net, wrapper)
    if fault == 'nan_lr':
        wrapper.optimizer.param_groups[0]['lr'] = float('nan')
        loss = _loss(net)
    elif fault == 'nan_grad':
        net[0].weight.register_hook(lambda g: g * float('nan'))
        loss = _loss(net)
    else:
        loss = _loss(net, float('nan') if fault == 'nan_loss' else float('inf'))
    wrapper.update_params(loss)
    after = _state(net, wrapper)
    for key, value in before['params'].items():
        assert torch.equal(value, after['params'][key]), key
    for idx, state in before['optim']['state'].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(
                after['optim']['state'][idx][name])), (idx, name)
    assert all(p.grad is None for p in net.parameters())  # nothing leaks into the next step
    assert wrapper.skipped_steps == 1 and wrapper.last_skip_iter == 7
    expected = {'nan_loss': 'loss is nan', 'inf_loss': 'loss is inf', 'nan_grad': 'gradient norm',
                'nan_lr': 'learning rate is nan'}[fault]
    assert expected in wrapper.last_skip_reason


def _runner(tmp_role: str = 'generator') -> SimpleNamespace:
    net = _net()
    wrapper = _wrapper(net)
    wrapper.role = tmp_role
    logs: list[str] = []
    logger = SimpleNamespace(warning=logs.append, info=logs.append)
    return SimpleNamespace(optim_wrapper=OptimWrapperDict(**{tmp_role: wrapper}), iter=0,
                           net=net, logs=logs, logger=logger,
                           message_hub=MessageHub.get_current_instance())


def test_the_hook_counts_logs_and_stops_after_n_in_a_row() -> None:
    runner = _runner()
    wrapper = runner.optim_wrapper['generator']
    hook = NonFiniteGuardHook(max_consecutive=3)
    hook.before_train(runner)
    pattern = ['nan', 'ok', 'nan', 'nan']  # a good step in between resets the streak
    for it, kind in enumerate(pattern):
        runner.iter = it
        runner.message_hub.update_info('iter', it)
        wrapper.update_params(_loss(runner.net, float('nan') if kind == 'nan' else 1.0))
        hook.after_train_iter(runner, it)
        assert iteration_skipped(runner) == (kind == 'nan')
    assert hook.streak == 2 and wrapper.skipped_steps == 3
    assert sum('skipped the optimizer step of generator (loss is nan' in m
               for m in runner.logs) == 3
    runner.iter = 4
    runner.message_hub.update_info('iter', 4)
    wrapper.update_params(_loss(runner.net, float('nan')))
    with pytest.raises(TrainingStopped, match='3 iterations in a row had a non-finite loss'):
        hook.after_train_iter(runner, 4)


def test_the_hook_refuses_an_unguarded_run() -> None:
    net = _net()
    runner = SimpleNamespace(optim_wrapper=OptimWrapperDict(g=_wrapper(net, OptimWrapper)))
    with pytest.raises(TrainingStopped, match="type='NonFiniteGuardOptimWrapper'"):
        NonFiniteGuardHook().before_train(runner)
    NonFiniteGuardHook(require_guard=False).before_train(runner)


def test_the_ema_leaves_a_skipped_iteration_untouched(tiny_backbone_cfg: dict) -> None:
    from rtdmd.registry import MODELS

    model = MODELS.build(dict(
        type='ACDMDDistiller', backbone=tiny_backbone_cfg, sampler=dict(type='CPSSampler'),
        matching=dict(type='RandomStopMatching', dmd_loss=dict(type='DMDLoss'),
                      fake_loss=dict(type='AmbientDSMLoss'))))
    wrapper = _wrapper(model.backbone.generator)
    wrapper.role = 'generator'
    runner = SimpleNamespace(model=model, iter=0, optim_wrapper=OptimWrapperDict(
        generator=wrapper))
    hook = TrainableEMAHook(decay=0.5)
    hook.before_train(runner)
    with torch.no_grad():
        model.backbone.generator.out.weight.add_(1.0)
    ema_before = {k: v.clone() for k, v in hook.ema.items()}
    wrapper.last_skip_iter = 0  # the guard skipped iteration 0
    hook.after_train_iter(runner, 0)
    assert all(torch.equal(ema_before[k], v) for k, v in hook.ema.items())
    runner.iter = 1
    hook.after_train_iter(runner, 1)
    assert not torch.equal(ema_before['out.weight'], hook.ema['out.weight'])


def test_a_resumed_ema_is_not_overwritten_in_before_train(tiny_backbone_cfg: dict) -> None:
    from rtdmd.registry import MODELS

    model = MODELS.build(dict(
        type='ACDMDDistiller', backbone=tiny_backbone_cfg, sampler=dict(type='CPSSampler'),
        matching=dict(type='RandomStopMatching', dmd_loss=dict(type='DMDLoss'),
                      fake_loss=dict(type='AmbientDSMLoss'))))
    runner = SimpleNamespace(model=model, iter=0)
    saved = {n: p.detach() + 3.0 for n, p in model.backbone.generator.named_parameters()}
    hook = TrainableEMAHook()
    hook.after_load_checkpoint(runner, {'ema_state': saved})  # load_or_resume comes first
    hook.before_train(runner)
    for name, value in saved.items():
        assert torch.equal(hook.ema[name], value)


def _dist_skip_worker(rank: int, world_size: int, port: int) -> None:
    import os

    import torch.distributed as dist

    from rtdmd.utils.mmengine_compat import init_distributed

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    try:
        init_distributed('pytorch', timeout_s=120)
        net = _net()
        wrapper = _wrapper(net)
        before = copy.deepcopy(net.state_dict())
        # Only rank 1 sees an inf loss (its gradients stay finite: no all-reduce here).
        wrapper.update_params(_loss(net) if rank == 0 else _loss(net, float('inf')))
        assert wrapper.skipped_steps == 1, rank
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
        expected = 'another rank' if rank == 0 else 'loss is inf'
        assert expected in wrapper.last_skip_reason, wrapper.last_skip_reason
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_every_rank_skips_when_one_rank_is_non_finite(monkeypatch) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
    mp.spawn(_dist_skip_worker, args=(2, port), nprocs=2, join=True)
