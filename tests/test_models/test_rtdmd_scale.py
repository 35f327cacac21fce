"""Stage 2 at scale: micro-batches, global advantages, the release's normalisation and warm start.

Every random number of a stage-2 epoch is keyed by its sample's group (``GroupDraws``) and every
term is a mean weighted by its micro-batch's share, so an epoch's update does not depend on the
micro-batch sizes, nor on how many processes share the global batch.
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmengine.optim import OptimWrapper, OptimWrapperDict

from rtdmd.functional.grpo import combine_advantages
from rtdmd.registry import MODELS
from rtdmd.testing.lora import randomize_lora

LINEAR = dict(type='LinearReward', direction=[0.6, 0.8])
TERMS = dict(policy=dict(type='ClippedRatioLoss'),
             bp=dict(type='RewardHingeLoss', loss_weight=0.1))


def _matching(placement: str = 'FinalStepMatching') -> dict:
    return dict(type=placement, dmd_loss=dict(type='DMDLoss', loss_weight=1.0),
                fake_loss=dict(type='AmbientDSMLoss'),
                consistency_loss=dict(type='ConsistencyLoss', loss_weight=0.1))


def _toy(backbone_cfg: dict, **overrides):
    cfg = dict(type='RTDMDDistiller', backbone=backbone_cfg,
               sampler=dict(type='CPSSampler', eta=0.9),
               rewards=dict(main=dict(scorer=LINEAR, weight=1.0)), group_size=4,
               terms=TERMS, matching=_matching('RandomStopMatching'),
               subgrpo=dict(range_start=0, range_end=2, num_train_steps=2))
    cfg.update(overrides)
    return MODELS.build(cfg)


def _sgd(model, lr: float = 0.05) -> OptimWrapperDict:
    """SGD: an update is the gradient times the rate, so gradients compare exactly."""
    return OptimWrapperDict(**{
        r: OptimWrapper(torch.optim.SGD(model.backbone.trainable_parameters(r), lr=lr))
        for r in ('generator', 'fake_score')})


def _trainable(model) -> dict[str, torch.Tensor]:
    return {f'{role}.{n}': p.detach().clone() for role in ('generator', 'fake_score')
            for n, p in getattr(model.backbone, role).named_parameters() if p.requires_grad}


def _delta(model, data, **chunks) -> dict[str, torch.Tensor]:
    """The update of one epoch with the given micro-batch sizes (one thread: CPU reductions
    split over threads by a busy machine's scheduler would add run-to-run noise)."""
    model = copy.deepcopy(model)
    model.micro_batch.update(chunks)
    before = _trainable(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train_step(data, _sgd(model))
    finally:
        torch.set_num_threads(threads)
    return {k: v - before[k] for k, v in _trainable(model).items()}


def _assert_same(a: dict, b: dict, rtol: float = 1e-4, atol: float = 1e-7) -> None:
    assert a.keys() == b.keys()
    moved = [k for k in a if float(a[k].abs().max()) > 0]
    assert moved, 'nothing trained'
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


@pytest.mark.parametrize('placement', ['FinalStepMatching', 'RandomStopMatching'])
def test_toy_epoch_does_not_depend_on_the_micro_batches(tiny_backbone_cfg: dict,
                                                        placement: str) -> None:
    model = _toy(tiny_backbone_cfg, matching=_matching(placement))
    data = dict(prompt=torch.tensor([0, 1, 1]), index=torch.arange(3))
    whole = _delta(model, data)
    for size in (1, 5):  # 5: micro-batches that cut through groups of 4
        _assert_same(_delta(model, data, rollout=size, fake_score=size, generator=size), whole)


def image_backbone_cfg(family: str, root: Path) -> dict:
    """A tiny SD3 or FLUX.2 backbone's config; writes its snapshots under ``root`` once."""
    from rtdmd.testing.flux2 import tiny_backbone_cfg as flux2_cfg
    from rtdmd.testing.sd3 import TINY_RESOLUTION, build_sd3_dir

    if family != 'sd3':
        return flux2_cfg(str(root))
    build_sd3_dir(str(root))
    return dict(type='SD3Backbone', pretrained='stable-diffusion-3-medium-diffusers',
                weights_root=str(root), resolution=TINY_RESOLUTION, max_sequence_length=16,
                dtype='float32', gradient_checkpointing=False, lora=dict(rank=4, alpha=8))


def _image_model(family: str, root: Path):
    backbone = image_backbone_cfg(family, root)
    model = MODELS.build(dict(
        type='RTDMDDistiller', backbone=backbone, sampler=dict(type='CPSSampler', eta=0.9),
        rewards=dict(bright=dict(scorer=dict(type='ImageBrightnessReward'))), group_size=2,
        terms=dict(policy=dict(type='ClippedRatioLoss'),
                   bp=dict(type='RewardHingeLoss', loss_weight=1.0)),
        matching=_matching(), subgrpo=dict(range_start=0, range_end=2, num_train_steps=2)))
    for role in ('generator', 'fake_score'):
        randomize_lora(getattr(model.backbone, role), seed=len(role))
    model.backbone_cfg_for_test = backbone
    return model


@pytest.mark.parametrize('family', ['sd3', 'flux2'])
def test_image_epoch_does_not_depend_on_the_micro_batches(family: str, tmp_path: Path) -> None:
    """Tiny SD3 and FLUX.2 (real diffusers classes): micro-batches of 1, 3 and the whole
    batch give the same LoRA update of both networks."""
    model = _image_model(family, tmp_path)
    data = dict(prompt=['a red cat', 'two blue dogs'], index=torch.arange(2))
    whole = _delta(model, data)
    for size in (1, 3):
        _assert_same(_delta(model, data, rollout=size, fake_score=size, generator=size), whole,
                     rtol=1e-3, atol=1e-6)


def test_per_step_normalisation_divides_the_summed_objective(tiny_backbone_cfg: dict) -> None:
    """The release divides its accumulated generator loss by sub-batches x trained steps: with
    SGD, the 'per_step' update is the 'sum' update over the passes per micro-batch (here 2
    trained stochastic steps + the final step + the random-stop DM term's own rollout)."""
    model = _toy(tiny_backbone_cfg, matching=_matching('RandomStopMatching'))
    data = dict(prompt=torch.tensor([0, 1]), index=torch.arange(2))
    per_step, summed = (_delta(_toy(tiny_backbone_cfg, loss_normalization=n,
                                    matching=_matching('RandomStopMatching')), data)
                        for n in ('per_step', 'sum'))
    del model
    for key in per_step:
        scale = 4 if key.startswith('generator.') else 1  # the fake update is a mean in both
        # the passes' float32 gradients partly cancel (measured up to 1e-4 of the update's max)
        tol = 1e-3 * float(summed[key].abs().max())
        assert float(summed[key].abs().max()) > 0, key
        torch.testing.assert_close(per_step[key] * scale, summed[key], rtol=0, atol=tol)


def test_a_non_finite_reward_drops_its_sample_or_stops(tiny_backbone_cfg: dict) -> None:
    from rtdmd.rewards.base import RewardScorer

    class HalfNaN(RewardScorer):
        differentiable = True

        def forward(self, samples, prompts=None, metadata=None):
            r = samples.float() @ torch.tensor([0.6, 0.8])
            return torch.where(torch.arange(r.shape[0]) % 3 == 0, torch.nan, r)

    rewards = dict(main=dict(scorer=dict(type=HalfNaN)))
    data = dict(prompt=torch.tensor([0, 1, 1]), index=torch.arange(3))
    model = _toy(tiny_backbone_cfg, rewards=rewards, terms=dict(policy=TERMS['policy']))
    log_vars = model.train_step(data, _sgd(model))
    assert float(log_vars['nonfinite_rewards']) == 4  # rows 0, 3, 6, 9 of 12
    assert all(torch.isfinite(v) for v in log_vars.values())
    assert all(torch.isfinite(p).all() for p in model.backbone.generator.parameters())
    strict = _toy(tiny_backbone_cfg, rewards=rewards, terms=dict(policy=TERMS['policy']),
                  nonfinite_reward='raise')
    with pytest.raises(FloatingPointError, match="non-finite rewards.*'main': 4"):
        strict.train_step(data, _sgd(strict))


def test_bad_micro_batch_settings_are_rejected(tiny_backbone_cfg: dict) -> None:
    with pytest.raises(TypeError, match='micro_batch got unknown keys'):
        _toy(tiny_backbone_cfg, micro_batch=dict(rolout=2))
    with pytest.raises(ValueError, match='micro_batch.generator'):
        _toy(tiny_backbone_cfg, micro_batch=dict(generator=0))
    with pytest.raises(ValueError, match='loss_normalization'):
        _toy(tiny_backbone_cfg, loss_normalization='mean')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


WORLD = dict(means=[[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]], stds=[0.3, 0.5, 0.4],
             class_weights=[[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
BACKBONE = dict(type='GaussianMixtureBackbone', world=WORLD, hidden_dim=16, depth=2,
                init_fit=dict(iters=5, batch_size=32))
PROMPTS, INDEX = torch.tensor([0, 1, 1, 0]), torch.arange(4)


def _worker(rank: int, port: int, cache: str, out: dict) -> None:
    from rtdmd.engine.wrappers import DistillerDataParallel

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RTDMD_CACHE=cache)
    dist.init_process_group('gloo', rank=rank, world_size=2)
    try:
        rewards = torch.tensor([[1.0, 2.0, 3.0, 5.0], [0.5, 0.0, 4.0, 1.0]])[rank]
        ids = torch.tensor([0, 0, 1, 1])

        def all_reduce(t):
            t = t.clone()
            dist.all_reduce(t)
            return t

        out[f'adv_{rank}'] = combine_advantages({'r': rewards}, {'r': 1.0}, ids,
                                                all_reduce=all_reduce)
        model = _toy(BACKBONE, group_size=4)
        DistillerDataParallel(model)
        before = _trainable(model)
        rows = slice(rank, None, 2)  # how a distributed sampler deals out the global batch
        model.train_step(dict(prompt=PROMPTS[rows], index=INDEX[rows]), _sgd(model))
        out[f'delta_{rank}'] = {k: v - before[k] for k, v in _trainable(model).items()}
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path: Path) -> None:
    """Advantages standardised over both ranks' samples, and the LoRA update of the 2-rank
    DDP epoch, equal one process holding the whole global batch."""
    os.environ['RTDMD_CACHE'] = str(tmp_path)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), str(tmp_path), out), nprocs=2, join=True)
        out = dict(out)
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 0.5, 0.0, 4.0, 1.0])
    single = combine_advantages({'r': rewards}, {'r': 1.0}, torch.tensor([0, 0, 1, 1] * 2)
                                + torch.tensor([0] * 4 + [2] * 4))
    torch.testing.assert_close(torch.cat([out['adv_0'], out['adv_1']]), single)
    assert not torch.allclose(out['adv_0'], combine_advantages(
        {'r': rewards[:4]}, {'r': 1.0}, torch.tensor([0, 0, 1, 1])))  # per rank would differ
    model = _toy(BACKBONE, group_size=4)
    before = _trainable(model)
    model.train_step(dict(prompt=PROMPTS, index=INDEX), _sgd(model))
    one = {k: v - before[k] for k, v in _trainable(model).items()}
    _assert_same(out['delta_0'], one, rtol=1e-4, atol=1e-7)
    _assert_same(out['delta_1'], one, rtol=1e-4, atol=1e-7)


def test_stage2_starts_a_fresh_std1_lora_over_a_frozen_stage1_one(tmp_path: Path) -> None:
    """The release's warm start: stage 1's LoRA frozen under a fresh one with lora_A ~ N(0, 1)
    and lora_B = 0, for both networks; teacher calls (adapters disabled, then re-enabled) must
    not make the frozen adapter trainable: after an epoch it has requires_grad False, no
    gradient, and its values unchanged."""
    model = _image_model('sd3', tmp_path)
    stage1 = tmp_path / 'stage1.pth'
    torch.save({'state_dict': model.state_dict()}, stage1)
    cfg = dict(type='RTDMDDistiller', backbone=model.backbone_cfg_for_test,
               sampler=dict(type='CPSSampler', eta=0.9),
               rewards=dict(bright=dict(scorer=dict(type='ImageBrightnessReward'))),
               group_size=2, terms=TERMS, matching=_matching(), init_checkpoint=str(stage1))
    stage2 = MODELS.build(cfg)
    stage2.init_weights()
    for role in ('generator', 'fake_score'):
        net = getattr(stage2.backbone, role)
        a = torch.cat([p.flatten() for n, p in net.named_parameters()
                       if '.default.' in n and 'lora_A' in n])
        b = torch.cat([p.flatten() for n, p in net.named_parameters()
                       if '.default.' in n and 'lora_B' in n])
        assert abs(float(a.std()) - 1.0) < 0.1 and float(b.abs().max()) == 0, role
    frozen = {(role, n): p.detach().clone() for role in ('generator', 'fake_score')
              for n, p in getattr(stage2.backbone, role).named_parameters() if '.stage1.' in n}
    assert frozen
    stage2.train_step(dict(prompt=['a red cat', 'two blue dogs'], index=torch.arange(2)),
                      _sgd(stage2))
    for role in ('generator', 'fake_score'):
        for n, p in getattr(stage2.backbone, role).named_parameters():
            if '.stage1.' in n:
                assert not p.requires_grad and p.grad is None, n
                assert torch.equal(p.detach(), frozen[role, n]), n
