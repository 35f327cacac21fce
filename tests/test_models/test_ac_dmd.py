import copy

import pytest
import torch
from mmengine.optim import OptimWrapper, OptimWrapperDict

import rtdmd.models.distillers.base as distiller_base
from rtdmd.registry import MODELS


def _distiller(backbone_cfg: dict, matching: dict | None = None, **overrides):
    match = dict(type='RandomStopMatching', dmd_loss=dict(type='DMDLoss'),
                 fake_loss=dict(type='AmbientDSMLoss'),
                 consistency_loss=dict(type='ConsistencyLoss', loss_weight=0.01))
    match.update(matching or {})
    cfg = dict(type='ACDMDDistiller', backbone=backbone_cfg,
               sampler=dict(type='CPSSampler', step_list=[1000, 750, 500, 250], eta=0.9),
               matching=match, fake_update_ratio=3, seed=0)
    cfg.update(overrides)
    return MODELS.build(cfg)


def _optim(model) -> OptimWrapperDict:
    return OptimWrapperDict(**{
        role: OptimWrapper(torch.optim.SGD(model.backbone.trainable_parameters(role), lr=0.01))
        for role in ('generator', 'fake_score')})


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_generator_steps_every_fake_update_ratio_iterations(tiny_backbone_cfg: dict) -> None:
    model = _distiller(tiny_backbone_cfg)
    optim = _optim(model)
    data = dict(prompt=torch.tensor([0, 1, 0, 1]))
    gen_changed, fake_changed = [], []
    for _ in range(6):
        gen, fake = _flat(model.backbone.generator), _flat(model.backbone.fake_score)
        log_vars = model.train_step(data, optim)
        gen_changed.append(not torch.equal(gen, _flat(model.backbone.generator)))
        fake_changed.append(not torch.equal(fake, _flat(model.backbone.fake_score)))
        assert ('loss_dmd' in log_vars) == gen_changed[-1]
        assert all(torch.isfinite(v) for v in log_vars.values())
    assert gen_changed == [False, False, True, False, False, True]
    assert all(fake_changed)
    assert int(model.iteration) == 6


def test_teacher_never_changes(tiny_backbone_cfg: dict) -> None:
    model = _distiller(tiny_backbone_cfg, fake_update_ratio=1)
    before = copy.deepcopy(model.backbone.teacher.state_dict())
    optim = _optim(model)
    for _ in range(2):
        model.train_step(dict(prompt=torch.tensor([0, 1])), optim)
    for k, v in model.backbone.teacher.state_dict().items():
        assert torch.equal(v, before[k])
    assert not any(p.requires_grad for p in model.backbone.teacher.parameters())


@pytest.mark.parametrize('matching', [
    dict(consistency_loss=None, sub_interval=False),  # DMD2
    dict(type='FinalStepMatching'),  # no random stop
])
def test_consistency_sub_interval_and_random_stop_are_optional(tiny_backbone_cfg: dict,
                                                              matching: dict) -> None:
    model = _distiller(tiny_backbone_cfg, matching=matching, fake_update_ratio=1)
    log_vars = model.train_step(dict(prompt=torch.tensor([0, 1])), _optim(model))
    assert ('loss_consistency' in log_vars) == ('consistency_loss' not in matching)
    assert 'loss_dmd' in log_vars and torch.isfinite(log_vars['loss_dmd'])


def test_where_the_generator_is_matched_is_the_components_class(tiny_backbone_cfg: dict
                                                                ) -> None:
    """AC-DMD matches at a noisy sub-interval point, DMD2 and the final step at s = 0."""
    cond = MODELS.build(tiny_backbone_cfg).encode_prompts(torch.tensor([0, 1, 0, 1]))
    points = {}
    for name, matching in (('ac_dmd', {}), ('dmd2', dict(sub_interval=False)),
                           ('final', dict(type='FinalStepMatching'))):
        model = _distiller(tiny_backbone_cfg, matching=matching)
        ctx = model.context(cond, step=5, tag='generator')
        x_s, s = model.matching.generator_point(ctx)
        assert x_s.requires_grad
        points[name] = (x_s, s)
    stop_s = points['ac_dmd'][1]
    assert float(points['dmd2'][1].abs().max()) == 0 and float(points['final'][1].max()) == 0
    # The same streams draw the same random stop; at a stop before the last step s > 0.
    sigmas = _distiller(tiny_backbone_cfg).sampler.sigmas(MODELS.build(tiny_backbone_cfg))
    assert float(stop_s[0]) in [float(v) for v in sigmas[1:]]


def test_iterations_are_reproducible_from_the_counter(tiny_backbone_cfg: dict) -> None:
    """Two copies of the same state draw the same randomness: resume is exact by design."""
    a = _distiller(tiny_backbone_cfg, fake_update_ratio=1)
    b = copy.deepcopy(a)
    data = dict(prompt=torch.tensor([0, 1, 1]))
    la = a.train_step(data, _optim(a))
    lb = b.train_step(data, _optim(b))
    for k in la:
        assert torch.equal(la[k], lb[k]), k
    assert torch.equal(_flat(a.backbone.generator), _flat(b.backbone.generator))


def test_shared_stream_is_rank_independent_local_stream_is_not(
        tiny_backbone_cfg: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _distiller(tiny_backbone_cfg)
    shared0, local0 = model.streams(7, 'fake')
    monkeypatch.setattr(distiller_base, 'get_rank', lambda: 1)
    shared1, local1 = model.streams(7, 'fake')
    assert torch.equal(torch.rand(5, generator=shared0), torch.rand(5, generator=shared1))
    assert not torch.equal(torch.rand(5, generator=local0), torch.rand(5, generator=local1))


def test_guidance_range_is_drawn_inside_its_bounds(tiny_backbone_cfg: dict) -> None:
    model = _distiller(tiny_backbone_cfg, matching=dict(teacher_guidance=(2.0, 4.0)))
    cond = model.backbone.encode_prompts(torch.tensor([0]))
    draws = [model.matching.draw_guidance(model.context(cond, i, 'g')) for i in range(100)]
    assert 2.0 <= min(draws) < 2.3 and 3.7 < max(draws) <= 4.0


def test_bad_arguments_are_rejected(tiny_backbone_cfg: dict) -> None:
    with pytest.raises(ValueError, match='fake_update_ratio'):
        _distiller(tiny_backbone_cfg, fake_update_ratio=0)
    with pytest.raises(TypeError, match='renoise'):
        _distiller(tiny_backbone_cfg, matching=dict(renoise=dict(ofset=10)))
    with pytest.raises(ValueError, match='dmd_loss'):
        _distiller(tiny_backbone_cfg, matching=dict(dmd_loss=None))
