"""The policy-gradient draws of tools/subgrpo_variance.py and their spread figures."""

import copy

import numpy as np
import pytest
import torch
from mmengine.optim import OptimWrapper, OptimWrapperDict

from rtdmd.evaluation.fake_tracking import empirical_velocity
from rtdmd.evaluation.policy_gradient import generator_gradient, gradient_spread
from rtdmd.models.backbones.gaussian_mixture import GaussianMixtureTeacher
from rtdmd.registry import MODELS

LINEAR = dict(type='LinearReward', direction=[0.6, 0.8])


def _grpo(backbone_cfg: dict, steps: int, bp: bool = False):
    terms = dict(policy=dict(type='ClippedRatioLoss'),
                 bp=dict(type='RewardHingeLoss', loss_weight=0.1) if bp else None)
    return MODELS.build(dict(
        type='RTDMDDistiller', backbone=backbone_cfg, sampler=dict(type='CPSSampler', eta=0.9),
        rewards=dict(main=dict(scorer=LINEAR, weight=1.0)), group_size=4, terms=terms,
        matching=None, subgrpo=dict(range_start=0, range_end=2, num_train_steps=steps)))


def _data(n: int = 4) -> dict:
    return dict(prompt=torch.arange(n) % 2, index=torch.arange(n))


def test_gradient_is_the_one_the_epoch_applies(tiny_backbone_cfg: dict) -> None:
    """With SGD at lr 1 and no clipping, train_step moves the generator by minus the gradient
    generator_gradient computes for the same epoch: the draws are the product's gradient."""
    model = _grpo(tiny_backbone_cfg, steps=2, bp=True)
    probe = copy.deepcopy(model)
    params = [p for p in model.backbone.generator.parameters() if p.requires_grad]
    before = torch.cat([p.detach().reshape(-1).double() for p in params])
    optim = OptimWrapperDict(**{r: OptimWrapper(torch.optim.SGD(
        model.backbone.trainable_parameters(r), lr=1.0)) for r in ('generator', 'fake_score')})
    model.train_step(_data(), optim)
    after = torch.cat([p.detach().reshape(-1).double() for p in params])
    grad = generator_gradient(probe, _data(), epoch=0)
    assert grad.abs().max() > 0
    torch.testing.assert_close(before - after, grad, rtol=1e-5, atol=1e-7)


def test_shared_noise_switch(tiny_backbone_cfg: dict) -> None:
    """All steps trained: nothing is shared, the switch is a no-op. One step trained: the
    other steps' noise differs, and so does the gradient."""
    full = _grpo(tiny_backbone_cfg, steps=3)
    torch.testing.assert_close(generator_gradient(full, _data(), 5, share_noise=True),
                               generator_gradient(full, _data(), 5, share_noise=False))
    one = _grpo(tiny_backbone_cfg, steps=1)
    shared = generator_gradient(one, _data(), 5, share_noise=True)
    assert not torch.allclose(shared, generator_gradient(one, _data(), 5, share_noise=False))
    torch.testing.assert_close(shared, generator_gradient(one, _data(), 5))  # deterministic


def test_spread_against_numpy() -> None:
    rng = np.random.default_rng(0)
    mu = rng.normal(size=50)
    draws = mu + 2.0 * rng.normal(size=(400, 50))
    ref = rng.normal(size=50) + mu
    out = gradient_spread(torch.as_tensor(draws), torch.as_tensor(ref))
    cov_trace = np.var(draws, axis=0, ddof=1).sum()
    mean = draws.mean(0)
    signal = mean @ mean - cov_trace / len(draws)
    u = ref / np.linalg.norm(ref)
    proj = draws @ u
    assert out['rel_var'] == pytest.approx(cov_trace / signal, rel=1e-9)
    assert out['proj_cv2'] == pytest.approx(proj.var(ddof=1) / proj.mean() ** 2, rel=1e-9)
    assert out['cos_ref'] == pytest.approx(mean @ u / np.linalg.norm(mean), rel=1e-9)
    # the unbiased signal: the true relative variance is 200 / |mu|^2
    assert out['rel_var'] == pytest.approx(4.0 * 50 / (mu @ mu), rel=0.25)


def test_spread_is_scale_free() -> None:
    draws = torch.randn(30, 8, dtype=torch.float64) + 3.0
    ref = torch.ones(8, dtype=torch.float64)
    a, b = gradient_spread(draws, ref), gradient_spread(7.5 * draws, 0.1 * ref)
    for key in ('rel_var', 'proj_cv2', 'cos_ref'):
        assert a[key] == pytest.approx(b[key], rel=1e-9)
    same = gradient_spread(draws[:1].repeat(5, 1), ref)
    assert same['rel_var'] < 1e-20 and same['proj_cv2'] < 1e-20


def test_empirical_velocity_of_one_sample_and_of_many() -> None:
    """One sample: v = (x - x1) / sigma exactly (up to the point masses' std). Many exact
    samples of one Gaussian: close to its closed-form velocity."""
    x1 = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    x = torch.randn(7, 2, dtype=torch.float64)
    torch.testing.assert_close(empirical_velocity(x1, x, 0.4), (x - x1) / 0.4,
                               rtol=1e-4, atol=1e-4)
    gauss = GaussianMixtureTeacher([[1.0, 2.0]], [0.5], [[1.0]])
    gen = torch.Generator().manual_seed(0)
    samples = gauss.sample(torch.zeros(4000, dtype=torch.long), gen)
    x = (0.5 * gauss.sample(torch.zeros(500, dtype=torch.long), gen)
         + 0.5 * torch.randn(500, 2, generator=gen))
    exact = gauss(x, torch.full((500,), 0.5), torch.zeros(500, dtype=torch.long))
    err = (empirical_velocity(samples, x, 0.5) - exact).pow(2).sum(-1).mean()
    assert err < 0.01 * exact.pow(2).sum(-1).mean()  # kernel-estimate error at N = 4000


@pytest.mark.parametrize('term', ['policy', 'bp'])
def test_reward_scale_reaches_bp_but_not_grpo(tiny_backbone_cfg: dict, term: str) -> None:
    """The normalisations the effective beta rests on (docs/analytic_world.md): GRPO's
    advantages are standardised, so scaling the reward by 3 leaves its gradient unchanged; the
    BP term's gradient is the reward's, so it triples (the hinge's margin is out of reach)."""
    def gradient(scale: float) -> torch.Tensor:
        reward = dict(type='LinearReward', direction=[0.6 * scale, 0.8 * scale])
        terms = dict(policy=dict(type='ClippedRatioLoss') if term == 'policy' else None,
                     bp=dict(type='RewardHingeLoss', margin=1e3, loss_weight=0.1)
                     if term == 'bp' else None)
        model = MODELS.build(dict(
            type='RTDMDDistiller', backbone=tiny_backbone_cfg,
            sampler=dict(type='CPSSampler', eta=0.9), rewards=dict(main=dict(scorer=reward)),
            group_size=8, terms=terms, matching=None))
        return generator_gradient(model, _data(), epoch=3)

    base, tripled = gradient(1.0), gradient(3.0)
    assert base.norm() > 0
    expected = base if term == 'policy' else 3.0 * base
    torch.testing.assert_close(tripled, expected, rtol=2e-3, atol=1e-3 * float(base.abs().max()))
