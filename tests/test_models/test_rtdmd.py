import copy

import pytest
import torch
from mmengine.optim import OptimWrapper, OptimWrapperDict

from rtdmd.registry import MODELS
from rtdmd.rewards.base import RewardScorer

LINEAR = dict(type='LinearReward', direction=[0.6, 0.8])


def _rtdmd(backbone_cfg: dict, **overrides):
    cfg = dict(type='RTDMDDistiller', backbone=backbone_cfg,
               sampler=dict(type='CPSSampler', eta=0.9),
               rewards=dict(main=dict(scorer=LINEAR, weight=1.0)), group_size=4,
               policy_loss=dict(type='ClippedRatioLoss'),
               reward_bp_loss=dict(type='RewardHingeLoss', loss_weight=0.1),
               dmd_loss=dict(type='DMDLoss', loss_weight=1.0),
               fake_loss=dict(type='AmbientDSMLoss'),
               consistency_loss=dict(type='ConsistencyLoss'),
               subgrpo=dict(range_start=0, range_end=2, num_train_steps=2))
    cfg.update(overrides)
    return MODELS.build(cfg)


def _optim(model, lr: float = 1e-2) -> OptimWrapperDict:
    return OptimWrapperDict(**{
        r: OptimWrapper(torch.optim.AdamW(model.backbone.trainable_parameters(r), lr=lr,
                                          weight_decay=0.0))
        for r in ('generator', 'fake_score')})


def _data(n: int = 3) -> dict:
    return dict(prompt=torch.arange(n) % 2, index=torch.arange(n))


def _flat(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize('layout', ['final_step', 'random_stop'])
def test_one_epoch_is_one_optimizer_step_of_each_role(tiny_backbone_cfg: dict,
                                                      layout: str) -> None:
    model = _rtdmd(tiny_backbone_cfg, dm_layout=layout)
    optim = _optim(model)
    log_vars = model.train_step(_data(), optim)
    assert {'loss_policy', 'loss_dm', 'loss_bp', 'loss_fake_dsm', 'reward_main'} <= set(log_vars)
    for role in ('generator', 'fake_score'):
        states = optim[role].optimizer.state.values()
        assert states and all(int(s['step']) == 1 for s in states)


def test_zero_advantages_give_no_policy_gradient(tiny_backbone_cfg: dict) -> None:
    """A reward constant within every group has zero advantages: GRPO must not move."""
    constant = dict(type='LinearReward', direction=[0.0, 0.0])
    model = _rtdmd(tiny_backbone_cfg, rewards=dict(c=dict(scorer=constant)),
                   reward_bp_loss=None, dmd_loss=None, fake_loss=None, consistency_loss=None)
    before = _flat(model.backbone.generator)
    model.train_step(_data(), _optim(model))
    assert torch.equal(before, _flat(model.backbone.generator))


def test_policy_gradient_raises_the_reward(tiny_backbone_cfg: dict) -> None:
    """REINFORCE on a linear reward moves the generator towards higher reward."""
    model = _rtdmd(tiny_backbone_cfg, reward_bp_loss=None, dmd_loss=None, fake_loss=None,
                   consistency_loss=None, group_size=64,
                   subgrpo=dict(range_start=0, range_end=2, num_train_steps=3))
    optim = _optim(model, lr=3e-3)
    prompts = torch.arange(2).repeat_interleave(2048)
    start = float((model.generate(prompts) @ torch.tensor([0.6, 0.8])).mean())
    for _ in range(15):
        model.train_step(_data(8), optim)
    end = float((model.generate(prompts) @ torch.tensor([0.6, 0.8])).mean())
    assert end > start + 0.1


def test_bp_only_gradient_is_the_reward_gradient(tiny_backbone_cfg: dict) -> None:
    """With only the hinge, the generator's output moves along the reward direction."""
    model = _rtdmd(tiny_backbone_cfg, policy_loss=None, dmd_loss=None, fake_loss=None,
                   consistency_loss=None)
    optim = _optim(model, lr=1e-2)
    prompts = torch.arange(2).repeat_interleave(512)
    direction = torch.tensor([0.6, 0.8])
    start = float((model.generate(prompts) @ direction).mean())
    for _ in range(5):
        model.train_step(_data(8), optim)
    assert float((model.generate(prompts) @ direction).mean()) > start + 0.05


def test_non_selected_steps_share_noise_within_a_group(tiny_backbone_cfg: dict) -> None:
    model = _rtdmd(tiny_backbone_cfg, subgrpo=dict(range_start=0, range_end=2,
                                                   num_train_steps=1))
    prompts, _, groups, keys = model._repeat(_data(2))
    cond = model.backbone.encode_prompts(prompts)
    selected = [1]
    ro = model._rollout(cond, keys, selected, epoch=0,
                        local=torch.Generator().manual_seed(0))
    for j in range(3):
        z = (ro.latents[j + 1] - ro.means[j]) / ro.stds[j]
        same = [torch.allclose(z[groups == g], z[groups == g][:1].expand(4, 2), atol=1e-5)
                for g in groups.unique()]
        assert all(same) == (j not in selected), j
    assert not torch.allclose(ro.latents[0][0], ro.latents[0][1])  # initial noise is not shared


def test_back_propagating_a_non_differentiable_reward_is_a_config_error(
        tiny_backbone_cfg: dict) -> None:
    mode = dict(type='ModeReward', values=[0.1, 0.5, 0.9],
                means=tiny_backbone_cfg['world']['means'])
    with pytest.raises(ValueError, match='none of .*ModeReward.* is differentiable'):
        _rtdmd(tiny_backbone_cfg, rewards=dict(mode=dict(scorer=mode)))
    _rtdmd(tiny_backbone_cfg, rewards=dict(mode=dict(scorer=mode)), reward_bp_loss=None)


def test_bad_settings_are_rejected(tiny_backbone_cfg: dict) -> None:
    with pytest.raises(ValueError, match='dm_layout'):
        _rtdmd(tiny_backbone_cfg, dm_layout='everywhere')
    with pytest.raises(TypeError, match='subgrpo'):
        _rtdmd(tiny_backbone_cfg, subgrpo=dict(num_steps=2))
    with pytest.raises(ValueError, match='fake_loss'):
        _rtdmd(tiny_backbone_cfg, fake_loss=None)


def test_init_from_a_stage_one_checkpoint_takes_the_ema_generator(
        tiny_backbone_cfg: dict, tmp_path) -> None:
    stage1 = _rtdmd(tiny_backbone_cfg)
    ema = {k: v + 1.0 for k, v in stage1.backbone.generator.state_dict().items()}
    torch.save(dict(state_dict=stage1.state_dict(), ema_state=ema), tmp_path / 'ckpt.pth')
    fresh = _rtdmd(copy.deepcopy(tiny_backbone_cfg), init_checkpoint=str(tmp_path / 'ckpt.pth'))
    for k, v in fresh.backbone.generator.state_dict().items():
        torch.testing.assert_close(v, ema[k])
    for k, v in fresh.backbone.fake_score.state_dict().items():
        torch.testing.assert_close(v, stage1.backbone.fake_score.state_dict()[k])


def test_checkpoints_hold_no_reward_model_and_load_without_one(tiny_backbone_cfg: dict) -> None:
    """Reward models load from their own weights: a state dict leaves them out (GBs for the
    real scorers), and a strict load neither misses them nor trips on an old state with them."""
    model = _rtdmd(tiny_backbone_cfg)
    assert 'direction' in model.rewards.main.state_dict()
    state = model.state_dict()
    assert state and not [k for k in state if 'rewards' in k]
    other = _rtdmd(tiny_backbone_cfg)
    result = other.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    legacy = dict(state, **{'rewards.main.direction': torch.tensor([1.0, 0.0])})
    assert not other.load_state_dict(legacy, strict=True).unexpected_keys
    assert torch.equal(other.rewards.main.direction, torch.tensor([0.6, 0.8]))  # config wins


class MetadataValueReward(RewardScorer):
    """``r = metadata['value'] + 0 * <x, 1>``: a reward read from each prompt's metadata, as
    GenEval reads its requirements; records what it was given."""

    differentiable = True

    def forward(self, samples, prompts=None, metadata=None):
        self.seen = (list(prompts.tolist()), list(metadata))
        values = torch.tensor([m['value'] for m in metadata], dtype=torch.float32)
        return values + 0.0 * samples.float().sum(dim=1)


def test_each_rollout_is_scored_with_its_own_prompts_metadata(tiny_backbone_cfg: dict) -> None:
    model = _rtdmd(tiny_backbone_cfg,
                   rewards=dict(meta=dict(scorer=dict(type=MetadataValueReward))))
    data = dict(prompt=torch.tensor([0, 1]), index=torch.arange(2),
                metadata=[{'value': 1.0}, {'value': 3.0}])
    log_vars = model.train_step(data, _optim(model))
    prompts, metas = model.rewards.meta.seen
    assert prompts == [0] * 4 + [1] * 4  # group_size 4, in group order
    assert metas == [{'value': 1.0}] * 4 + [{'value': 3.0}] * 4
    assert float(log_vars['reward_meta']) == 2.0
