import contextlib
import copy

import pytest
import torch
from mmengine.optim import OptimWrapper, OptimWrapperDict

from rtdmd.models.losses.base import GeneratorTerm
from rtdmd.registry import LOSSES, MODELS
from rtdmd.rewards.base import RewardScorer

LINEAR = dict(type='LinearReward', direction=[0.6, 0.8])


MATCHING = dict(type='FinalStepMatching', dmd_loss=dict(type='DMDLoss', loss_weight=1.0),
                fake_loss=dict(type='AmbientDSMLoss'),
                consistency_loss=dict(type='ConsistencyLoss'))


def _rtdmd(backbone_cfg: dict, terms: dict | None = None, matching: dict | None = None,
           **overrides):
    all_terms = dict(policy=dict(type='ClippedRatioLoss'),
                     bp=dict(type='RewardHingeLoss', loss_weight=0.1))
    all_terms.update(terms or {})
    cfg = dict(type='RTDMDDistiller', backbone=backbone_cfg,
               sampler=dict(type='CPSSampler', eta=0.9),
               rewards=dict(main=dict(scorer=LINEAR, weight=1.0)), group_size=4,
               terms=all_terms, matching=None if matching is False else {**MATCHING,
                                                                         **(matching or {})},
               subgrpo=dict(range_start=0, range_end=2, num_train_steps=2))
    cfg.update(overrides)
    return MODELS.build(cfg)


NO_DM = dict(matching=False)


def _optim(model, lr: float = 1e-2) -> OptimWrapperDict:
    return OptimWrapperDict(**{
        r: OptimWrapper(torch.optim.AdamW(model.backbone.trainable_parameters(r), lr=lr,
                                          weight_decay=0.0))
        for r in ('generator', 'fake_score')})


def _data(n: int = 3) -> dict:
    return dict(prompt=torch.arange(n) % 2, index=torch.arange(n))


def _flat(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize('placement', ['FinalStepMatching', 'RandomStopMatching'])
def test_one_epoch_is_one_optimizer_step_of_each_role(tiny_backbone_cfg: dict,
                                                      placement: str) -> None:
    model = _rtdmd(tiny_backbone_cfg, matching=dict(type=placement))
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
                   terms=dict(bp=None), **NO_DM)
    before = _flat(model.backbone.generator)
    model.train_step(_data(), _optim(model))
    assert torch.equal(before, _flat(model.backbone.generator))


def test_policy_gradient_raises_the_reward(tiny_backbone_cfg: dict) -> None:
    """REINFORCE on a linear reward moves the generator towards higher reward."""
    model = _rtdmd(tiny_backbone_cfg, terms=dict(bp=None), **NO_DM, group_size=64,
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
    model = _rtdmd(tiny_backbone_cfg, terms=dict(policy=None), **NO_DM)
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
    groups = model.repeat_prompts(_data(2))
    cond = model.backbone.encode_prompts(groups.prompts)
    selected = [1]
    ro, _ = model.sample_and_score(model.epoch_context(cond, groups, 0, selected), epoch=0)
    groups = groups.ids
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
    with pytest.raises(ValueError, match=r"terms \['bp'\].*none of .*ModeReward.* is "
                                         'differentiable'):
        _rtdmd(tiny_backbone_cfg, rewards=dict(mode=dict(scorer=mode)))
    _rtdmd(tiny_backbone_cfg, rewards=dict(mode=dict(scorer=mode)), terms=dict(bp=None))


def test_bad_settings_are_rejected(tiny_backbone_cfg: dict) -> None:
    with pytest.raises(TypeError, match='subgrpo'):
        _rtdmd(tiny_backbone_cfg, subgrpo=dict(num_steps=2))
    with pytest.raises(ValueError, match='num_train_steps'):
        _rtdmd(tiny_backbone_cfg, subgrpo=dict(range_start=0, range_end=2, num_train_steps=4))
    with pytest.raises(ValueError, match='terms.dm: the name is taken'):
        _rtdmd(tiny_backbone_cfg, terms=dict(dm=dict(type='ClippedRatioLoss')))
    with pytest.raises(ValueError, match='rewards.main must be dict'):
        _rtdmd(tiny_backbone_cfg, rewards=dict(main=dict(type='LinearReward')))
    with pytest.raises(TypeError, match='unknown arguments'):
        _rtdmd(tiny_backbone_cfg, rewards=dict(main=dict(scorer=dict(LINEAR, scale=2))))


def test_init_weights_starts_from_the_stage_one_ema_generator(tiny_backbone_cfg: dict,
                                                                tmp_path) -> None:
    """The warm start happens in init_weights (training only), in place: parameters a Runner
    handed to an optimizer before keep their identity."""
    stage1 = _rtdmd(tiny_backbone_cfg)
    ema = {k: v + 1.0 for k, v in stage1.backbone.generator.state_dict().items()}
    torch.save(dict(state_dict=stage1.state_dict(), ema_state=ema), tmp_path / 'ckpt.pth')
    fresh = _rtdmd(copy.deepcopy(tiny_backbone_cfg), init_checkpoint=str(tmp_path / 'ckpt.pth'))
    before = {k: v.clone() for k, v in fresh.backbone.generator.state_dict().items()}
    for k, v in fresh.backbone.generator.state_dict().items():  # built: not read yet
        torch.testing.assert_close(v, before[k])
        assert not torch.allclose(v, ema[k])
    params = list(fresh.backbone.generator.parameters())
    fresh.init_weights()
    assert all(a is b for a, b in zip(params, fresh.backbone.generator.parameters(),
                                      strict=True))
    for k, v in fresh.backbone.generator.state_dict().items():
        torch.testing.assert_close(v, ema[k])
    for k, v in fresh.backbone.fake_score.state_dict().items():
        torch.testing.assert_close(v, stage1.backbone.fake_score.state_dict()[k])


class CountingLinear(RewardScorer):
    """The linear reward, counting how many scorers were built."""

    differentiable = True
    built = 0

    def __init__(self, direction):
        super().__init__()
        type(self).built += 1
        self.register_buffer('direction', torch.tensor(direction))

    def forward(self, samples, prompts=None, metadata=None):
        return samples.float() @ self.direction


def test_reward_models_are_built_on_first_use_and_never_checkpointed(
        tiny_backbone_cfg: dict) -> None:
    """A model built to sample builds no reward model; training builds it once; a state dict
    leaves it out (GBs for the real scorers), and an old state that held one still loads."""
    CountingLinear.built = 0
    rewards = dict(main=dict(scorer=dict(type=CountingLinear, direction=[0.6, 0.8])))
    model = _rtdmd(tiny_backbone_cfg, rewards=rewards)
    model.generate(torch.tensor([0, 1]))
    assert CountingLinear.built == 0
    optim = _optim(model)
    model.train_step(_data(), optim)
    model.train_step(_data(), optim)
    assert CountingLinear.built == 1
    state = model.state_dict()
    assert state and not [k for k in state if 'reward' in k or 'direction' in k]
    assert not [n for n, _ in model.named_modules() if 'reward' in n]
    other = _rtdmd(tiny_backbone_cfg, rewards=rewards)
    result = other.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    legacy = dict(state, **{'rewards.main.direction': torch.tensor([1.0, 0.0])})
    assert not other.load_state_dict(legacy, strict=True).unexpected_keys
    assert torch.equal(other.reward.scorers.main.direction, torch.tensor([0.6, 0.8]))


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
    prompts, metas = model.reward.scorers.meta.seen
    assert prompts == [0] * 4 + [1] * 4  # group_size 4, in group order
    assert metas == [{'value': 1.0}] * 4 + [{'value': 3.0}] * 4
    assert float(log_vars['reward_meta']) == 2.0


@LOSSES.register_module(force=True)
class StepProbe(GeneratorTerm):
    """A generator term of a user's: pulls the velocity of one chosen step to zero, records
    which steps it was handed."""

    def __init__(self, step: int = 1, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.step = step
        self.loss_weight = loss_weight
        self.seen: list[int] = []

    def steps(self, ctx):
        return {self.step}

    def forward(self, view):
        self.seen.append(view.j)
        return self.loss_weight * view.v.pow(2).mean()


def test_a_new_generator_term_is_injected_by_config(tiny_backbone_cfg: dict) -> None:
    """The distiller runs what it was given: a term registered elsewhere gets its step, is
    logged under its config name, and is the only term that moves the generator here."""
    model = _rtdmd(tiny_backbone_cfg, terms=dict(policy=None, bp=None,
                                                 probe=dict(type='StepProbe', step=1)),
                   **NO_DM)
    optim = _optim(model)
    before = _flat(model.backbone.generator)
    log_vars = model.train_step(_data(), optim)
    assert model.terms.probe.seen == [1]
    assert set(log_vars) == {'reward_main', 'nonfinite_rewards', 'loss_probe', 'loss_generator'}
    assert not torch.equal(before, _flat(model.backbone.generator))


class ContextProbe(OptimWrapper):
    """An OptimWrapper that records whether a forward runs inside its optim_context."""

    inside = False

    @contextlib.contextmanager
    def optim_context(self, model):
        type(self).inside = True
        try:
            with super().optim_context(model):
                yield
        finally:
            type(self).inside = False


def test_forwards_run_inside_the_optimizer_context(tiny_backbone_cfg: dict,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every trainable forward of an update runs inside its wrapper's optim_context, where
    mmengine applies autocast and DDP no_sync."""
    model = _rtdmd(tiny_backbone_cfg, matching=dict(type='RandomStopMatching'))
    optim = OptimWrapperDict(**{
        r: ContextProbe(torch.optim.AdamW(model.backbone.trainable_parameters(r), lr=1e-3))
        for r in ('generator', 'fake_score')})
    calls = []
    original = model.backbone.predict_velocity

    def recording(role, x, sigma, cond, guidance_scale=1.0):
        calls.append((role, torch.is_grad_enabled(), ContextProbe.inside))
        return original(role, x, sigma, cond, guidance_scale)

    monkeypatch.setattr(model.backbone, 'predict_velocity', recording)
    model.train_step(_data(), optim)
    with_grad = [c for c in calls if c[1] and c[0] != 'teacher']
    assert with_grad and all(inside for _, _, inside in with_grad)
