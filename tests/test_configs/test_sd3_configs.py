"""The SD3-Medium / SD3.5-Medium configs load, validate and hold the release's numbers.

Numbers from ALGORITHM.md 6.1 (wiring, LoRA), 6.2 (cold start) and 6.3 (RTDMD stage). No
weights are needed: only the configs are loaded.
"""

from __future__ import annotations

import pytest

from rtdmd.apis.stages import check_stage_options, stage_config
from rtdmd.utils.config import load_config

MODELS = {
    'sd3m': dict(folder='stable-diffusion-3-medium-diffusers', resolution=1024, cfg=7.0,
                 group_size=16, prompts_per_gpu=2,
                 micro_batch=dict(rollout=16, fake_score=16, generator=4)),
    'sd35m': dict(folder='stable-diffusion-3.5-medium', resolution=512, cfg=4.5,
                  group_size=24, prompts_per_gpu=6,
                  micro_batch=dict(rollout=36, fake_score=72, generator=16)),
}
LORA_TARGETS = ['attn.to_q', 'attn.to_k', 'attn.to_v', 'attn.to_out.0', 'attn.add_q_proj',
                'attn.add_k_proj', 'attn.add_v_proj', 'attn.to_add_out']


def _check_backbone(backbone: dict, name: str) -> None:
    spec = MODELS[name]
    assert backbone.type == 'SD3Backbone'
    assert backbone.pretrained == spec['folder']
    assert backbone.repo_id == f"stabilityai/{spec['folder']}"
    assert backbone.weights_root == 'weights'  # '${weights_root}' resolved ($RTDMD_WEIGHTS unset)
    assert backbone.resolution == spec['resolution']
    assert backbone.dtype == 'bfloat16' and backbone.gradient_checkpointing
    assert backbone.max_sequence_length == 128
    assert backbone.lora == dict(rank=32, alpha=64, init='gaussian', target_modules=LORA_TARGETS)


@pytest.fixture(autouse=True)
def _no_weights_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv('RTDMD_WEIGHTS', raising=False)


@pytest.mark.parametrize('name', list(MODELS))
def test_stage1_config(name: str) -> None:
    cfg = load_config(f'configs/ac_dmd/{name}_4step.py')
    _check_backbone(cfg.model.backbone, name)
    model = cfg.model
    assert model.type == 'ACDMDDistiller'
    match = model.matching
    assert match.teacher_guidance == MODELS[name]['cfg']
    assert model.sampler.step_list == [1000, 750, 500, 250] and model.sampler.eta == 0.9
    assert model.fake_update_ratio == 10
    assert match.type == 'RandomStopMatching'  # AC-DMD, random stop
    assert match.get('sub_interval', True)  # the class's default: the sub-interval
    assert match.renoise == dict(offset=10.0, end=1000.0, min_step=20.0, max_step=980.0)
    assert match.consistency_loss.loss_weight == 0.01 and match.consistency_max_jump == 200
    assert match.fake_loss.move_scale_out and match.fake_loss.max_weight == 10.0
    assert match.dmd_loss.normalize
    for role in ('generator', 'fake_score'):
        wrapper = cfg.optim_wrapper[role]
        assert wrapper.optimizer.lr == 3e-5 and wrapper.optimizer.weight_decay == 0.0
        assert wrapper.optimizer.betas == (0.9, 0.999) and wrapper.clip_grad.max_norm == 1.0
    assert cfg.custom_hooks == [dict(type='TrainableEMAHook', role='generator', decay=0.99,
                                     interval=1)]
    assert cfg.train_dataloader.batch_size == 9  # per GPU, x 8 GPUs
    assert cfg.train_dataloader.dataset.path == 'pickscore_train.txt'
    assert cfg.train_cfg.max_iters == 15000 and cfg.randomness.seed == 42


@pytest.mark.parametrize('name', list(MODELS))
def test_stage2_config_and_its_pipeline(name: str) -> None:
    spec = MODELS[name]
    cfg = load_config(f'configs/rtdmd/{name}_4step.py')
    cfg.work_dir = 'work_dirs/unused'  # tools/train.py sets it; stage work dirs derive from it
    check_stage_options(cfg, {})  # every stage's config loads and validates
    assert [s['name'] for s in cfg.stages] == ['ac_dmd', 'rtdmd']
    assert cfg.stages[1]['init_from'] == 'ac_dmd'
    stage1 = stage_config(cfg, cfg.stages[0])
    assert stage1.model.type == 'ACDMDDistiller'
    _check_backbone(stage1.model.backbone, name)

    model = cfg.model
    _check_backbone(model.backbone, name)
    assert model.type == 'RTDMDDistiller'
    assert model.group_size == spec['group_size']
    assert model.matching.teacher_guidance == spec['cfg']
    assert model.sampler.step_list == [1000, 750, 500, 250] and model.sampler.eta == 0.9
    assert model.matching.type == 'FinalStepMatching'
    assert model.matching.dmd_loss.loss_weight == 1e-3
    assert model.terms.bp.margin == 3.0 and model.terms.bp.loss_weight == 1e-4
    assert model.terms.policy.clip_low == 1e-5 and model.terms.policy.clip_high == 1e-5
    assert model.matching.consistency_loss.loss_weight == 0.01  # on for SD3-M and SD3.5-M
    assert model.subgrpo == dict(range_start=0, range_end=2, num_train_steps=2)
    assert model.advantage_clip == 5.0
    # what tools/plan.py fits in 70 GiB per rank on DDP (docs/scale.md)
    assert model.micro_batch == spec['micro_batch']
    # the release's stage-2 recipe: loss / (sub-batches x trained steps), a fresh N(0, 1) LoRA
    assert model.loss_normalization == 'per_step' and model.fresh_lora_std == 1.0
    # the release's training rewards, weight 1 each (ALGORITHM.md 6.3)
    assert {k: (v.scorer.type, v.weight) for k, v in model.rewards.items()} == {
        'clipscore': ('CLIPScore', 1.0), 'hpsv2': ('HPSv2', 1.0),
        'pickscore': ('PickScore', 1.0), 'geneval': ('GenEvalReward', 1.0)}
    generator, fake = cfg.optim_wrapper.generator, cfg.optim_wrapper.fake_score
    assert generator.optimizer.lr == 3e-6 and generator.optimizer.weight_decay == 1e-4
    assert fake.optimizer.lr == 3e-5 and generator.clip_grad.max_norm == 1.0
    assert cfg.custom_hooks == [dict(type='TrainableEMAHook', role='generator', decay=0.9,
                                     interval=8, warmup=True, sub_batches=16),
                                dict(type='RewardHackingMonitorHook', interval=10)]
    assert cfg.train_dataloader.batch_size == spec['prompts_per_gpu']
    assert cfg.train_dataloader.dataset.path == 'geneval_metadata.jsonl'
    assert cfg.train_dataloader.dataset.require_metadata
    assert cfg.train_cfg.max_iters == 1000 and cfg.default_hooks.checkpoint.interval == 100


def test_weights_root_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('RTDMD_WEIGHTS', '/data/weights')
    cfg = load_config('configs/rtdmd/sd35m_4step.py')
    assert cfg.weights_root == '/data/weights'
    assert cfg.model.backbone.weights_root == '/data/weights'
    cfg = load_config('configs/rtdmd/sd35m_4step.py', {'weights_root': '/elsewhere'})
    assert cfg.model.backbone.weights_root == '/elsewhere'


def test_geneval_prompts_batch_with_their_metadata() -> None:
    from mmengine.runner import Runner

    from rtdmd.utils.setup_env import register_all_modules

    register_all_modules()
    cfg = load_config('configs/rtdmd/sd3m_4step.py')
    loader_cfg = cfg.train_dataloader.to_dict()
    loader_cfg.update(batch_size=4, num_workers=0)
    batch = next(iter(Runner.build_dataloader(loader_cfg, seed=0)))
    assert len(batch['prompt']) == 4 and all(isinstance(p, str) for p in batch['prompt'])
    assert all('include' in m for m in batch['metadata']) and len(batch['index']) == 4
