"""The FLUX.1-dev configs load, validate and carry the release's numbers (ALGORITHM.md 6)."""

from __future__ import annotations

import pytest

from rtdmd.utils.config import load_config
from tests.conftest import REPO

STAGE1 = 'configs/ac_dmd/flux1_dev_4step.py'
STAGE2 = 'configs/rtdmd/flux1_dev_4step.py'
LORA_TARGETS = ['attn.to_q', 'attn.to_k', 'attn.to_v', 'attn.to_out.0', 'attn.add_q_proj',
                'attn.add_k_proj', 'attn.add_v_proj', 'attn.to_add_out']


def _load(path: str, **options):
    return load_config(str(REPO / path), options or None)


@pytest.mark.parametrize('path', [STAGE1, STAGE2])
def test_backbone_is_flux1_dev_at_512px(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv('RTDMD_WEIGHTS', raising=False)
    cfg = _load(path)
    backbone = cfg.model.backbone
    assert backbone.type == 'FluxBackbone' and backbone.pretrained == 'FLUX.1-dev'
    assert backbone.repo_id == 'black-forest-labs/FLUX.1-dev'
    assert backbone.get('generator_init') is None  # the generator starts from the base too
    assert backbone.weights_root == cfg.weights_root == 'weights'
    assert backbone.resolution == 512 and backbone.max_sequence_length == 512
    assert backbone.dtype == 'bfloat16' and backbone.gradient_checkpointing
    assert dict(backbone.lora) == dict(rank=32, alpha=64, init='gaussian',
                                       target_modules=LORA_TARGETS)
    sampler = cfg.model.sampler
    assert sampler.step_list == [1000, 750, 500, 250] and sampler.eta == 0.9
    assert cfg.model.matching.teacher_guidance == 3.5  # distilled guidance, one forward pass


def test_weights_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('RTDMD_WEIGHTS', '/data/weights')
    assert _load(STAGE2).model.backbone.weights_root == '/data/weights'
    cfg = _load(STAGE1, weights_root='/elsewhere')
    assert cfg.model.backbone.weights_root == '/elsewhere'


def test_stage1_hyperparameters() -> None:
    cfg = _load(STAGE1)
    model = cfg.model
    assert model.type == 'ACDMDDistiller' and model.fake_update_ratio == 10
    match = model.matching
    assert match.type == 'RandomStopMatching'  # AC-DMD, random stop
    assert match.get('sub_interval', True)  # the class's default: the sub-interval
    assert match.consistency_loss.loss_weight == 0.01 and match.consistency_max_jump == 200
    assert dict(match.renoise) == dict(offset=10.0, end=1000.0, min_step=20.0, max_step=980.0)
    for role in ('generator', 'fake_score'):
        optimizer = cfg.optim_wrapper[role].optimizer
        assert optimizer.lr == 3e-5 and optimizer.weight_decay == 0.0
        assert cfg.optim_wrapper[role].clip_grad.max_norm == 1.0
    assert cfg.train_dataloader.batch_size == 9
    assert cfg.train_dataloader.dataset.path == 'pickscore_train.txt'
    assert cfg.train_cfg.max_iters == 15000
    (ema,) = cfg.custom_hooks
    assert ema.decay == 0.99 and ema.interval == 1


def test_stage2_hyperparameters() -> None:
    cfg = _load(STAGE2)
    model = cfg.model
    assert model.type == 'RTDMDDistiller' and model.group_size == 24
    assert model.matching.type == 'FinalStepMatching' and model.matching.teacher_guidance == 3.5
    assert model.matching.consistency_loss is None  # off for FLUX.1-dev in stage 2
    assert model.matching.dmd_loss.loss_weight == 1e-3
    assert model.terms.bp.loss_weight == 1e-4 and model.terms.bp.margin == 3.0
    assert model.terms.policy.clip_low == model.terms.policy.clip_high == 1e-5
    assert dict(model.subgrpo) == dict(range_start=0, range_end=2, num_train_steps=2)
    assert model.advantage_clip == 5.0
    # what tools/plan.py fits in 70 GiB per rank under FSDP on 32 GPUs (docs/scale.md)
    assert model.micro_batch == dict(rollout=24, fake_score=24, generator=16)
    # the release's stage-2 recipe: loss / (sub-batches x trained steps), a fresh N(0, 1) LoRA
    assert model.loss_normalization == 'per_step' and model.fresh_lora_std == 1.0
    # the release's training rewards, weight 1 each (ALGORITHM.md 6.3)
    assert {k: (v.scorer.type, v.weight) for k, v in model.rewards.items()} == {
        'clipscore': ('CLIPScore', 1.0), 'hpsv2': ('HPSv2', 1.0),
        'pickscore': ('PickScore', 1.0), 'geneval': ('GenEvalReward', 1.0)}
    generator = cfg.optim_wrapper.generator.optimizer
    assert generator.lr == 3e-6 and generator.weight_decay == 1e-4
    assert cfg.optim_wrapper.fake_score.optimizer.lr == 1e-6
    # 2 prompts per GPU x 32 GPUs = 64 prompts, x K = 1536 images per epoch.
    assert cfg.train_dataloader.batch_size * 32 == 64
    assert cfg.train_dataloader.dataset.require_metadata
    assert cfg.train_cfg.max_iters == 1000 and cfg.default_hooks.checkpoint.interval == 50
    ema, monitors = cfg.custom_hooks
    assert ema.decay == 0.9 and ema.interval == 8 and ema.warmup and ema.sub_batches == 16
    assert monitors.type == 'RewardHackingMonitorHook' and monitors.interval == 10
    assert [s['name'] for s in cfg.stages] == ['ac_dmd', 'rtdmd']
    assert cfg.stages[1]['init_from'] == 'ac_dmd'
