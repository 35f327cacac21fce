from types import SimpleNamespace

import torch

from rtdmd.engine.hooks.ema import TrainableEMAHook
from rtdmd.registry import MODELS


def _runner(tiny_backbone_cfg: dict) -> SimpleNamespace:
    model = MODELS.build(dict(
        type='ACDMDDistiller', backbone=tiny_backbone_cfg, sampler=dict(type='CPSSampler'),
        matching=dict(type='RandomStopMatching', dmd_loss=dict(type='DMDLoss'),
                      fake_loss=dict(type='AmbientDSMLoss'))))
    return SimpleNamespace(model=model, iter=0)


def test_ema_follows_the_closed_form_and_covers_trainable_params_only(
        tiny_backbone_cfg: dict) -> None:
    runner = _runner(tiny_backbone_cfg)
    gen = runner.model.backbone.generator
    gen.out.bias.requires_grad_(False)  # a frozen parameter is not averaged
    hook = TrainableEMAHook(decay=0.9)
    hook.before_train(runner)
    assert 'out.bias' not in hook.ema and 'out.weight' in hook.ema
    w0 = gen.out.weight.detach().clone()
    with torch.no_grad():
        gen.out.weight.add_(1.0)
    for i in range(3):
        runner.iter = i
        hook.after_train_iter(runner, i)
    # constant target w0 + 1 from start w0: ema = w0 + (1 - 0.9^3)
    torch.testing.assert_close(hook.ema['out.weight'], w0 + (1 - 0.9 ** 3))


def test_swap_exchanges_and_restores(tiny_backbone_cfg: dict) -> None:
    runner = _runner(tiny_backbone_cfg)
    gen = runner.model.backbone.generator
    hook = TrainableEMAHook(decay=0.5)
    hook.before_train(runner)
    live = gen.out.weight.detach().clone()
    hook.ema['out.weight'] = torch.zeros_like(live)
    hook.before_val_epoch(runner)
    assert float(gen.out.weight.detach().abs().max()) == 0
    hook.after_val_epoch(runner)
    torch.testing.assert_close(gen.out.weight.detach(), live)


def test_checkpoint_round_trip(tiny_backbone_cfg: dict) -> None:
    runner = _runner(tiny_backbone_cfg)
    hook = TrainableEMAHook()
    hook.before_train(runner)
    hook.ema = {k: v + 1 for k, v in hook.ema.items()}
    ckpt: dict = {}
    hook.before_save_checkpoint(runner, ckpt)
    other = TrainableEMAHook()
    other.after_load_checkpoint(runner, ckpt)
    for k, v in hook.ema.items():
        torch.testing.assert_close(other.ema[k], v)


def test_warmup_decay_and_interval(tiny_backbone_cfg: dict) -> None:
    runner = _runner(tiny_backbone_cfg)
    gen = runner.model.backbone.generator
    hook = TrainableEMAHook(decay=0.9, warmup=True, interval=2)
    hook.before_train(runner)
    start = hook.ema['out.weight'].clone()
    with torch.no_grad():
        gen.out.weight.add_(1.0)
    runner.iter = 0
    hook.after_train_iter(runner, 0)            # (0 + 1) % 2 != 0: no update
    torch.testing.assert_close(hook.ema['out.weight'], start)
    runner.iter = 1
    hook.after_train_iter(runner, 1)            # decay min((1+1)/(10+1), 0.9) = 2/11
    torch.testing.assert_close(hook.ema['out.weight'], start + (1 - 2 / 11))


def test_sub_batch_cadence_replays_the_release_loop(tiny_backbone_cfg: dict) -> None:
    """The release calls its EMA after each of 16 sub-batches with the epoch counter s gating
    ((s + 1) % 8) and s moving on at the last one; the hook's two pulls per epoch replay it."""
    from rtdmd.functional.ema import ema_warmup_decay

    runner = _runner(tiny_backbone_cfg)
    gen = runner.model.backbone.generator
    hook = TrainableEMAHook(decay=0.9, interval=8, warmup=True, sub_batches=16)
    hook.before_train(runner)
    ema = gen.out.weight.detach().clone()  # the release's loop, by hand
    for epoch in range(20):
        runner.iter = epoch
        hook.before_train_iter(runner, epoch)
        for b in range(16):
            if b == 15:  # the optimizer step, then the counter moves on
                with torch.no_grad():
                    gen.out.weight.add_(0.1 * (epoch + 1))
            s = epoch + 1 if b == 15 else epoch
            if (s + 1) % 8 == 0:
                d = ema_warmup_decay(s, 0.9)
                ema = d * ema + (1 - d) * gen.out.weight.detach()
        hook.after_train_iter(runner, epoch)
        torch.testing.assert_close(hook.ema['out.weight'], ema, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ema, gen.out.weight)  # it did lag behind
