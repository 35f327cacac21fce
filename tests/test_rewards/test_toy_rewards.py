import pytest
import torch

from rtdmd.registry import REWARDS


def test_linear_reward_value_and_gradient() -> None:
    reward = REWARDS.build(dict(type='LinearReward', direction=[0.5, -2.0]))
    x = torch.randn(7, 2, requires_grad=True)
    value = reward(x, None)
    torch.testing.assert_close(value, x.detach() @ torch.tensor([0.5, -2.0]))
    value.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.5, -2.0]]).expand(7, 2))
    assert reward.differentiable


def test_quadratic_reward_peaks_at_its_center() -> None:
    reward = REWARDS.build(dict(type='QuadraticReward', center=[1.0, 2.0]))
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    value = reward(x, None)
    torch.testing.assert_close(value, torch.tensor([0.0, -5.0]))
    value.sum().backward()
    torch.testing.assert_close(x.grad, -2 * (x.detach() - torch.tensor([1.0, 2.0])))


def test_mode_reward_is_piecewise_constant_by_nearest_mean() -> None:
    reward = REWARDS.build(dict(type='ModeReward', values=[0.1, 0.9],
                                means=[[-1.0, 0.0], [1.0, 0.0]]))
    x = torch.tensor([[-3.0, 5.0], [0.2, -1.0], [0.9, 0.0]])
    torch.testing.assert_close(reward(x, None), torch.tensor([0.1, 0.9, 0.9]))
    assert not reward.differentiable
    assert reward.upper_bound == pytest.approx(0.9)  # what exact tilted sampling needs


def test_mode_reward_needs_one_value_per_mode() -> None:
    with pytest.raises(ValueError, match='one value per component'):
        REWARDS.build(dict(type='ModeReward', values=[0.1], means=[[0.0], [1.0]]))
