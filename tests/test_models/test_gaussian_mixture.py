import pytest
import torch

from rtdmd.functional.flow import interpolate
from rtdmd.models.backbones.gaussian_mixture import GaussianMixtureTeacher


@pytest.fixture()
def teacher(tiny_world: dict) -> GaussianMixtureTeacher:
    return GaussianMixtureTeacher.from_world(tiny_world)


@pytest.mark.parametrize('sigma', [0.05, 0.3, 0.7, 0.95])
def test_velocity_matches_score_identity(teacher: GaussianMixtureTeacher, sigma: float) -> None:
    """v = (E[eps|x] - x)/(1 - sigma) with E[eps|x] = -sigma grad log p_sigma (Tweedie)."""
    x = (torch.randn(64, 2, dtype=torch.float64) * 2).requires_grad_(True)
    c = torch.randint(0, teacher.num_classes + 1, (64,))
    s = torch.full((64,), sigma, dtype=torch.float64)
    (score,) = torch.autograd.grad(teacher.log_prob(x, s, c).sum(), x)
    expected = (-sigma * score - x) / (1 - sigma)
    torch.testing.assert_close(teacher(x.detach(), s, c), expected.detach(), rtol=1e-9,
                               atol=1e-9)


def test_velocity_is_the_conditional_expectation_by_monte_carlo(
        teacher: GaussianMixtureTeacher) -> None:
    """E[(eps - x0) f(x)] = E[v(x) f(x)] for test functions f (definition of E[.|x])."""
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    c = torch.zeros(n, dtype=torch.long)
    x0 = teacher.sample(c, gen)
    eps = torch.randn(x0.shape, generator=gen)
    sigma = torch.full((n,), 0.6)
    x = interpolate(x0, eps, sigma)
    v = teacher(x, sigma, c)
    for f in (torch.ones_like(x[:, :1]), x[:, :1], torch.tanh(x[:, 1:2])):
        lhs = ((eps - x0) * f).mean(0)
        rhs = (v * f).mean(0)
        torch.testing.assert_close(lhs, rhs, atol=0.02, rtol=0)


def test_samples_have_the_mixture_moments(teacher: GaussianMixtureTeacher) -> None:
    gen = torch.Generator().manual_seed(1)
    c = torch.ones(100_000, dtype=torch.long)
    x = teacher.sample(c, gen).double()
    w = teacher.weights[1].double()
    mean = (w[:, None] * teacher.means.double()).sum(0)
    torch.testing.assert_close(x.mean(0), mean, atol=0.02, rtol=0)
    second = (w[:, None] * (teacher.means.double() ** 2 + teacher.stds.double()[:, None] ** 2)
              ).sum(0)
    torch.testing.assert_close((x ** 2).mean(0), second, atol=0.05, rtol=0)


def test_empty_prompt_is_the_class_average(teacher: GaussianMixtureTeacher) -> None:
    torch.testing.assert_close(teacher.weights[-1], teacher.weights[:-1].mean(0))
    x = torch.randn(8, 2)
    s = torch.full((8,), 0.5)
    p_marg = teacher.log_prob(x, s, torch.full((8,), teacher.num_classes)).exp()
    p_cls = torch.stack([teacher.log_prob(x, s, torch.full((8,), k)).exp()
                         for k in range(teacher.num_classes)]).mean(0)
    torch.testing.assert_close(p_marg, p_cls)


def test_pure_noise_velocity(teacher: GaussianMixtureTeacher) -> None:
    """At sigma = 1, x = eps and E[x0|x] = E[x0]: v = x - E[x0]."""
    x = torch.randn(5, 2, dtype=torch.float64)
    c = torch.zeros(5, dtype=torch.long)
    mean = (teacher.weights[0].double()[:, None] * teacher.means.double()).sum(0)
    torch.testing.assert_close(teacher(x, torch.ones(5, dtype=torch.float64), c), x - mean)


@pytest.mark.parametrize('world, match', [
    (dict(means=[[0.0, 0.0]], stds=[1.0]), 'exactly the keys'),
    (dict(means=[[0.0, 0.0]], stds=[1.0, 2.0], class_weights=[[1.0]]), 'stds'),
    (dict(means=[[0.0, 0.0]], stds=[1.0], class_weights=[[1.0, 0.0]]), 'class_weights'),
    (dict(means=[[0.0, 0.0]], stds=[-1.0], class_weights=[[1.0]]), '> 0'),
])
def test_bad_world_is_a_clear_error(world: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GaussianMixtureTeacher.from_world(world)


def test_a_first_run_builds_the_students_a_rerun_loads(tmp_path, tiny_world: dict) -> None:
    """The teacher-velocity fit is cached: a first run (which fits) and a rerun (which loads)
    start from the same weights and nothing else of the fit survives it (a leftover gradient
    would be added to the first training step's)."""
    from rtdmd.registry import MODELS

    cfg = dict(type='GaussianMixtureBackbone', world=tiny_world, hidden_dim=16, depth=2,
               init_fit=dict(iters=5, batch_size=32), cache_dir=str(tmp_path))
    fitted, loaded = MODELS.build(cfg), MODELS.build(cfg)
    assert len(list((tmp_path / 'toy_init').glob('*.pt'))) == 1
    for role in ('generator', 'fake_score'):
        for (name, a), b in zip(getattr(fitted, role).named_parameters(),
                                getattr(loaded, role).parameters(), strict=True):
            assert torch.equal(a, b), name
            assert a.grad is None and b.grad is None, name
