"""Properties of the DMD gradient and its surrogate loss in ``rtdmd.functional.dmd``."""

from __future__ import annotations

import pytest
import torch

from rtdmd.functional.dmd import dmd_gradient, dmd_surrogate_loss

SHAPE = (4, 3, 5, 6)


def _rand(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def test_unnormalised_gradient_is_fake_minus_real() -> None:
    x, fake, real = (_rand(*SHAPE, seed=i) for i in range(3))
    g = dmd_gradient(x, fake, real, normalize=False)
    assert torch.equal(g, fake - real)
    # Same as the release's form (x - real) - (x - fake), up to rounding.
    assert torch.allclose(g, (x - real) - (x - fake), atol=1e-14)


def test_normalisation_matches_per_sample_loop() -> None:
    x, fake, real = (_rand(*SHAPE, seed=i) for i in range(3, 6))
    g = dmd_gradient(x, fake, real)
    for b in range(SHAPE[0]):
        denom = sum(
            abs(xi - ri)
            for xi, ri in zip(x[b].flatten().tolist(), real[b].flatten().tolist(), strict=True)
        )
        denom /= x[b].numel()
        assert torch.allclose(g[b], (fake[b] - real[b]) / denom, rtol=1e-12, atol=0)


def test_gradient_carries_no_autograd_history() -> None:
    x = _rand(*SHAPE, seed=6).requires_grad_()
    fake = _rand(*SHAPE, seed=7).requires_grad_()
    real = _rand(*SHAPE, seed=8).requires_grad_()
    g = dmd_gradient(x, fake, real)
    assert not g.requires_grad and g.grad_fn is None


def test_degenerate_input_gives_finite_gradient() -> None:
    x = _rand(*SHAPE, seed=9, dtype=torch.float32)
    fake = _rand(*SHAPE, seed=10, dtype=torch.float32)
    # x == pred_real == pred_fake: 0 / 0 -> 0.
    g = dmd_gradient(x, x.clone(), x.clone())
    assert torch.equal(g, torch.zeros_like(x))
    # x == pred_real but fake differs: finite (clamped) instead of inf.
    assert torch.isfinite(dmd_gradient(x, fake, x.clone())).all()
    zeros = torch.zeros(SHAPE)
    assert torch.equal(dmd_gradient(zeros, zeros, zeros), zeros)


@pytest.mark.parametrize('where', ['x', 'fake', 'real'])
@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_input_gives_a_visible_nan_for_that_sample_only(where: str, bad: float
                                                                   ) -> None:
    """A diverged network must not turn into a silent zero gradient (and a logged 0.0 loss)."""
    x, fake, real = (_rand(*SHAPE, seed=s, dtype=torch.float32) for s in (9, 10, 11))
    inputs = dict(x=x.clone(), fake=fake.clone(), real=real.clone())
    inputs[where][0, 0, 0, 0] = bad
    g = dmd_gradient(inputs['x'], inputs['fake'], inputs['real'])
    assert torch.isnan(g[0]).all()
    # A healthy sample is unaffected by a degenerate one in the same batch.
    assert torch.equal(g[1:], dmd_gradient(x[1:], fake[1:], real[1:]))
    assert torch.isnan(dmd_surrogate_loss(inputs['x'], g))


def test_gradient_dtype_follows_x() -> None:
    x, fake, real = (_rand(*SHAPE, seed=i, dtype=torch.float32) for i in (11, 12, 13))
    g_bf16 = dmd_gradient(x.bfloat16(), fake.bfloat16(), real.bfloat16())
    assert g_bf16.dtype == torch.bfloat16
    ref = dmd_gradient(x.bfloat16().float(), fake.bfloat16().float(), real.bfloat16().float())
    assert torch.equal(g_bf16, ref.bfloat16())


def test_surrogate_autograd_equals_grad_over_numel() -> None:
    x = _rand(*SHAPE, seed=14).requires_grad_()
    grad = dmd_gradient(x, _rand(*SHAPE, seed=15), _rand(*SHAPE, seed=16))
    loss = dmd_surrogate_loss(x, grad)
    assert loss.dtype == torch.float64 and loss.ndim == 0
    assert torch.allclose(loss, 0.5 * grad.pow(2).mean(), rtol=1e-12)
    (dx,) = torch.autograd.grad(loss, x)
    assert torch.allclose(dx, grad / x.numel(), rtol=1e-12, atol=1e-18)


def test_surrogate_gradient_reaches_low_precision_x() -> None:
    x = _rand(*SHAPE, seed=17, dtype=torch.float32).requires_grad_()
    grad = _rand(*SHAPE, seed=18, dtype=torch.float32)
    loss = dmd_surrogate_loss(x, grad)
    assert loss.dtype == torch.float64
    loss.backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert torch.allclose(x.grad, grad / x.numel(), rtol=1e-6, atol=0)


@pytest.mark.parametrize('normalize', [False, True])
def test_descent_step_moves_sample_toward_real(normalize: bool) -> None:
    fake, real = _rand(*SHAPE, seed=19), _rand(*SHAPE, seed=20)
    x = (fake + 0.1 * _rand(*SHAPE, seed=21)).requires_grad_()
    grad = dmd_gradient(x, fake, real, normalize=normalize)
    (dx,) = torch.autograd.grad(dmd_surrogate_loss(x, grad), x)
    x_new = x.detach() - 10.0 * dx
    step = (x_new - x.detach()).flatten(1)
    # The step points along pred_real - pred_fake, sample by sample.
    direction = (real - fake).flatten(1)
    cosine = torch.nn.functional.cosine_similarity(step, direction, dim=1)
    assert torch.allclose(cosine, torch.ones(SHAPE[0], dtype=torch.float64), atol=1e-12)
    # And it reduces the distance to the teacher prediction.
    before = (x.detach() - real).flatten(1).norm(dim=1)
    after = (x_new - real).flatten(1).norm(dim=1)
    assert torch.all(after < before)


def test_shape_mismatch_raises() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        dmd_gradient(x, torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        dmd_surrogate_loss(x, torch.zeros(3, 2))
