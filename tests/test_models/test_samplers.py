import pytest
import torch

from rtdmd.registry import MODELS, SAMPLERS


@pytest.fixture()
def backbone(tiny_backbone_cfg: dict):
    return MODELS.build(tiny_backbone_cfg)


def _cond(backbone, n: int = 6):
    return backbone.encode_prompts(torch.arange(n) % 2)


def test_eta_zero_is_the_euler_ode(backbone) -> None:
    sampler = SAMPLERS.build(dict(type='CPSSampler', eta=0.0))
    cond = _cond(backbone)
    noise = torch.randn(6, 2)
    ro = sampler.rollout(backbone, cond, noise)
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


def test_last_step_is_deterministic_and_returns_the_clean_prediction(backbone) -> None:
    sampler = SAMPLERS.build(dict(type='CPSSampler', eta=0.9))
    cond = _cond(backbone)
    noise = torch.randn(6, 2)
    ro = sampler.rollout(backbone, cond, noise, generator=torch.Generator().manual_seed(0))
    assert float(ro.s.abs().max()) == 0
    torch.testing.assert_close(ro.x_s, ro.sample)  # at sigma 0 the CPS sample is x0_hat
    assert float(ro.log_probs[-1].abs().max()) == 0
    assert all(float(lp.abs().max()) > 0 for lp in ro.log_probs[:-1])


def test_random_stop_returns_noisy_x_s_and_clean_sample(backbone) -> None:
    """Item 1 of the pitfalls: x0_hat of the last step vs the re-noised CPS sample."""
    sampler = SAMPLERS.build(dict(type='CPSSampler'))
    cond = _cond(backbone)
    ro = sampler.rollout(backbone, cond, torch.randn(6, 2), stop=2,
                         generator=torch.Generator().manual_seed(0))
    sigmas = sampler.sigmas(backbone)
    torch.testing.assert_close(ro.s, sigmas[2].expand(6))
    x1, v1 = ro.latents[1], ro.velocities[1]
    torch.testing.assert_close(ro.sample, x1 - sigmas[1] * v1)
    assert not torch.allclose(ro.sample, ro.x_s)


def test_gradient_flows_through_the_last_executed_step_only(backbone) -> None:
    sampler = SAMPLERS.build(dict(type='CPSSampler'))
    cond = _cond(backbone)
    ro = sampler.rollout(backbone, cond, torch.randn(6, 2), stop=3, grad_last=True,
                         generator=torch.Generator().manual_seed(0))
    assert ro.x_s.requires_grad and ro.sample.requires_grad
    assert not ro.latents[2].requires_grad  # input of the last step comes from no-grad steps
    ro.sample.sum().backward()
    assert all(p.grad is not None for p in backbone.generator.parameters())
    assert all(p.grad is None for p in backbone.fake_score.parameters())


def test_fixed_step_noise_is_used(backbone) -> None:
    sampler = SAMPLERS.build(dict(type='CPSSampler'))
    cond = _cond(backbone)
    noise = torch.randn(6, 2)
    shared = {0: torch.zeros(6, 2), 1: torch.ones(6, 2)}
    a = sampler.rollout(backbone, cond, noise, generator=torch.Generator().manual_seed(0),
                        step_noise=shared)
    b = sampler.rollout(backbone, cond, noise, generator=torch.Generator().manual_seed(1),
                        step_noise=shared)
    torch.testing.assert_close(a.latents[2], b.latents[2])      # steps 0, 1 fixed
    assert not torch.allclose(a.latents[3], b.latents[3])       # step 2 drew its own noise
    torch.testing.assert_close(a.latents[1], a.means[0])        # zero noise: sample = mean


def test_euler_sampler_uses_uniform_steps_and_no_noise(backbone) -> None:
    sampler = SAMPLERS.build(dict(type='EulerSampler', num_steps=8))
    torch.testing.assert_close(sampler.sigmas(backbone), torch.linspace(1, 0, 9))
    assert sampler.eta == 0.0


def test_bad_step_list_and_stop_are_rejected(backbone) -> None:
    with pytest.raises(ValueError, match='decreasing'):
        SAMPLERS.build(dict(type='CPSSampler', step_list=[250, 500]))
    sampler = SAMPLERS.build(dict(type='CPSSampler'))
    with pytest.raises(ValueError, match='stop'):
        sampler.rollout(backbone, _cond(backbone), torch.randn(6, 2), stop=5)
