import math

import pytest
import torch

from rtdmd.models.backbones.base import index_condition
from rtdmd.models.samplers import (
    CPSTransition,
    DrawsNoise,
    GeneratorNoise,
    GivenNoise,
    GroupDraws,
    GroupSharedNoise,
    PerSampleNoise,
    Rollout,
    StreamDraws,
)
from rtdmd.registry import MODELS, SAMPLERS


@pytest.fixture()
def backbone(tiny_backbone_cfg: dict):
    return MODELS.build(tiny_backbone_cfg)


def _cond(backbone, n: int = 6):
    return backbone.encode_prompts(torch.arange(n) % 2)


def _noise(seed: int = 0) -> GeneratorNoise:
    return GeneratorNoise(torch.Generator().manual_seed(seed))


def test_eta_zero_is_the_euler_ode(backbone) -> None:
    sampler = SAMPLERS.build(dict(type='CPSSampler', eta=0.0))
    cond = _cond(backbone)
    noise = torch.randn(6, 2)
    ro = sampler.rollout(backbone, cond, noise)  # a tensor: the initial latent
    sigmas = sampler.sigmas(backbone)
    x = noise
    with torch.no_grad():
        for j in range(4):
            v = backbone.predict_velocity('generator', x, sigmas[j], cond)
            x0 = x - sigmas[j] * v
            x = x + (sigmas[j + 1] - sigmas[j]) * v
    torch.testing.assert_close(ro.x_s, x)
    torch.testing.assert_close(ro.sample, x0)
    assert all(float(lp.abs().max()) == 0 for lp in ro.log_probs)
    assert sampler.stochastic_steps(sigmas) == []


def test_last_step_is_deterministic_and_returns_the_clean_prediction(backbone) -> None:
    sampler = SAMPLERS.build(dict(type='CPSSampler', eta=0.9))
    ro = sampler.rollout(backbone, _cond(backbone), _noise())
    assert float(ro.s.abs().max()) == 0
    torch.testing.assert_close(ro.x_s, ro.sample)  # at sigma 0 the CPS sample is x0_hat
    assert float(ro.log_probs[-1].abs().max()) == 0
    assert all(float(lp.abs().max()) > 0 for lp in ro.log_probs[:-1])
    assert sampler.stochastic_steps(ro.sigmas) == [0, 1, 2]
    assert sampler.last_step == 3


def test_random_stop_returns_noisy_x_s_and_clean_sample(backbone) -> None:
    """Item 1 of the pitfalls: x0_hat of the last step vs the re-noised CPS sample."""
    sampler = SAMPLERS.build(dict(type='CPSSampler'))
    ro = sampler.rollout(backbone, _cond(backbone), _noise(), stop=2)
    sigmas = sampler.sigmas(backbone)
    torch.testing.assert_close(ro.s, sigmas[2].expand(6))
    x1, v1 = ro.latents[1], ro.velocities[1]
    torch.testing.assert_close(ro.sample, x1 - sigmas[1] * v1)
    assert not torch.allclose(ro.sample, ro.x_s)


def test_random_stop_covers_every_step_count() -> None:
    draws = StreamDraws(torch.Generator().manual_seed(0), torch.Generator(), 1)
    assert {draws.stop('stop', 4) for _ in range(200)} == {1, 2, 3, 4}
    assert {GroupDraws((0, i), ['a']).stop('stop', 4) for i in range(200)} == {1, 2, 3, 4}


def test_gradient_flows_through_the_last_executed_step_only(backbone) -> None:
    sampler = SAMPLERS.build(dict(type='CPSSampler'))
    ro = sampler.rollout(backbone, _cond(backbone), _noise(), stop=3, grad_last=True)
    assert ro.x_s.requires_grad and ro.sample.requires_grad
    assert not ro.latents[2].requires_grad  # input of the last step comes from no-grad steps
    ro.sample.sum().backward()
    assert all(p.grad is not None for p in backbone.generator.parameters())
    assert all(p.grad is None for p in backbone.fake_score.parameters())


def test_the_stored_log_prob_is_the_transition_log_prob(backbone) -> None:
    """What the policy term recomputes at training time equals what sampling recorded."""
    sampler = SAMPLERS.build(dict(type='CPSSampler'))
    cond = _cond(backbone)
    ro = sampler.rollout(backbone, cond, _noise())
    for j in range(3):
        lp = sampler.transition.log_prob(ro.latents[j + 1], ro.latents[j], ro.velocities[j],
                                         ro.sigmas[j], ro.sigmas[j + 1])
        torch.testing.assert_close(lp, ro.log_probs[j], rtol=0, atol=0)
    # The surrogate is -mean((x' - mu)^2) = -std^2 mean(z^2): about -std^2 at sigma_next.
    assert float(ro.log_probs[0].mean()) == pytest.approx(
        -float(ro.stds[0]) ** 2, rel=0.8)


def test_group_shared_noise_is_shared_only_on_its_steps(backbone) -> None:
    sampler = SAMPLERS.build(dict(type='CPSSampler'))
    keys = ['a', 'a', 'a', 'b', 'b', 'b']
    noise = GroupSharedNoise(_noise(), keys, epoch=3, shared_steps=[0, 2])
    ro = sampler.rollout(backbone, _cond(backbone), noise)
    for j in range(3):
        z = (ro.latents[j + 1] - ro.means[j]) / ro.stds[j]
        same = all(torch.allclose(z[i], z[3 * (i // 3)], atol=1e-5) for i in range(6))
        assert same == (j in (0, 2)), j
        assert not torch.allclose(z[0], z[3], atol=1e-3)  # groups differ
    assert not torch.allclose(ro.latents[0][0], ro.latents[0][1])  # initial noise not shared


def test_per_sample_noise_does_not_depend_on_the_batch(backbone) -> None:
    sampler = SAMPLERS.build(dict(type='CPSSampler'))
    cond = _cond(backbone)
    full = sampler.rollout(backbone, cond, PerSampleNoise([5, 6, 7, 8, 9, 10]))
    sub = sampler.rollout(backbone, _cond(backbone, 2), PerSampleNoise([5, 6]))
    torch.testing.assert_close(full.sample[:2], sub.sample, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='2 seeds for a batch of 6'):
        sampler.rollout(backbone, cond, PerSampleNoise([5, 6]))


def test_group_draws_do_not_depend_on_the_micro_batch(backbone) -> None:
    """Keyed by group and name: a micro-batch draws exactly its rows of the whole batch's, so
    rollouts in chunks equal the unchunked one."""
    keys = ['a'] * 3 + ['b'] * 3
    draws = GroupDraws((0, 7, 'rollout'), keys)
    for name in ('u', 'v'):
        whole = draws.normal(name, (2,), 'cpu')
        parts = torch.cat([draws.slice(a, b).normal(name, (2,), 'cpu')
                           for a, b in ((0, 1), (1, 4), (4, 6))])
        assert torch.equal(whole, parts)
    assert not torch.equal(draws.normal('u', (2,), 'cpu'), draws.normal('v', (2,), 'cpu'))
    assert torch.equal(draws.uniform('t', 'cpu')[3:], draws.slice(3, 6).uniform('t', 'cpu'))
    jumps = draws.randint('j', 1, 201, 'cpu')
    assert jumps.min() >= 1 and jumps.max() <= 200
    assert draws.scalar('g') == draws.slice(2, 5).scalar('g')  # one value per update
    assert draws.stop('stop', 4) == draws.slice(0, 1).stop('stop', 4)
    # the K copies of a group draw different numbers; another update draws others
    z = draws.normal('z', (2,), 'cpu')
    assert not torch.allclose(z[0], z[1])
    assert not torch.equal(z, GroupDraws((0, 8, 'rollout'), keys).normal('z', (2,), 'cpu'))
    sampler = SAMPLERS.build(dict(type='CPSSampler'))
    cond = _cond(backbone)
    whole = sampler.rollout(backbone, cond, DrawsNoise(draws, 'r'))
    parts = [sampler.rollout(backbone, index_condition(cond, torch.arange(a, b)),
                             DrawsNoise(draws.slice(a, b), 'r'))
             for a, b in ((0, 1), (1, 4), (4, 6))]
    torch.testing.assert_close(Rollout.cat(parts).sample, whole.sample, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole.slice(1, 4).latents[2], parts[1].latents[2],
                               rtol=1e-5, atol=1e-6)


def test_stream_draws_are_stage_ones_streams_in_call_order() -> None:
    shared, local = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    draws = StreamDraws(torch.Generator().manual_seed(1), torch.Generator().manual_seed(2), 5)
    assert torch.equal(draws.uniform('t', 'cpu'), torch.rand(5, generator=shared))
    assert torch.equal(draws.normal('z', (3,), 'cpu'), torch.randn(5, 3, generator=local))
    assert torch.equal(draws.randint('j', 1, 9, 'cpu'), torch.randint(1, 9, (5,),
                                                                       generator=shared))
    assert draws.stop('stop', 4) == int(torch.randint(1, 5, (1,), generator=shared))


def test_given_noise_serves_fixed_step_noise_and_refuses_missing_noise(backbone) -> None:
    sampler = SAMPLERS.build(dict(type='CPSSampler'))
    cond, x0 = _cond(backbone), torch.randn(6, 2)
    fixed = {0: torch.zeros(6, 2), 1: torch.ones(6, 2), 2: torch.zeros(6, 2)}
    ro = sampler.rollout(backbone, cond, GivenNoise(x0, fixed))
    torch.testing.assert_close(ro.latents[0], x0)
    torch.testing.assert_close(ro.latents[1], ro.means[0])  # zero noise: sample = mean
    torch.testing.assert_close(ro.latents[2], ro.means[1] + ro.stds[1])
    with pytest.raises(ValueError, match='step 0 is stochastic'):
        sampler.rollout(backbone, cond, x0)  # eta 0.9 needs step noise


def test_euler_sampler_uses_uniform_steps_and_no_noise(backbone) -> None:
    sampler = SAMPLERS.build(dict(type='EulerSampler', num_steps=8))
    torch.testing.assert_close(sampler.sigmas(backbone), torch.linspace(1, 0, 9))
    assert sampler.eta == 0.0


def test_bad_step_list_eta_and_stop_are_rejected(backbone) -> None:
    with pytest.raises(ValueError, match='decreasing'):
        SAMPLERS.build(dict(type='CPSSampler', step_list=[250, 500]))
    with pytest.raises(ValueError, match='eta'):
        SAMPLERS.build(dict(type='CPSSampler', eta=1.5))
    sampler = SAMPLERS.build(dict(type='CPSSampler'))
    with pytest.raises(ValueError, match='stop'):
        sampler.rollout(backbone, _cond(backbone), _noise(), stop=5)


@pytest.mark.parametrize('eta', [0.0, 0.3, 0.9, 1.0])
def test_back_projection_difference_is_noise_free(eta: float) -> None:
    gen = torch.Generator().manual_seed(7)
    shape = (6, 3, 4, 4)
    x_t, v_r, v_f = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
    s = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.75, 0.9], dtype=torch.float64)
    t = s + (1 - s) * torch.tensor([0.5, 0.2, 0.9, 0.1, 0.6, 0.3], dtype=torch.float64)
    theta = eta * math.pi / 2
    coef = (s * math.cos(theta) * (1 - t) - (1 - s) * t)[:, None, None, None]
    diffs = []
    for _ in range(2):
        noise = torch.randn(shape, generator=gen, dtype=torch.float64)
        xs_real, xs_fake = CPSTransition(eta).back_project(x_t, v_r, v_f, t, s, noise)
        torch.testing.assert_close(xs_fake - xs_real, coef * (v_f - v_r), rtol=1e-10,
                                   atol=1e-12)
        diffs.append(xs_fake - xs_real)
    torch.testing.assert_close(diffs[0], diffs[1], rtol=0, atol=1e-12)


def test_back_projection_to_zero_gives_x0_predictions() -> None:
    gen = torch.Generator().manual_seed(8)
    x_t, v_r, v_f = (torch.randn(4, 2, 3, 3, generator=gen) for _ in range(3))
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])
    xs_real, xs_fake = CPSTransition(0.9).back_project(x_t, v_r, v_f, t, 0.0, None)
    tt = t[:, None, None, None]
    torch.testing.assert_close(xs_real, x_t - tt * v_r)
    torch.testing.assert_close(xs_fake, x_t - tt * v_f)
