"""Figures a reader can trust: per-panel boxes, contours named by what they show, labelled
sweep panels whose limits do not turn tiny differences into cliffs."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from rtdmd.apis.sweep import value_limits
from rtdmd.evaluation.plots import panel_title, plot_samples
from rtdmd.evaluation.tilted import sample_tilted, tilted_mixture
from rtdmd.models.backbones.gaussian_mixture import GaussianMixtureTeacher
from rtdmd.rewards.toy import LinearReward


def _inside(x: torch.Tensor, box: tuple[float, ...]) -> float:
    return float(((x[:, 0] >= box[0]) & (x[:, 0] <= box[1]) & (x[:, 1] >= box[2])
                  & (x[:, 1] <= box[3])).double().mean())


def test_panels_have_their_own_boxes_and_name_their_contours(tmp_path: Path) -> None:
    teacher = GaussianMixtureTeacher([[2.0, 0.0], [-2.0, 0.0]], [0.3, 0.3], [[0.5, 0.5]])
    reward, beta = LinearReward([1.0, 0.0]), 0.8
    gen = torch.Generator().manual_seed(0)
    c = torch.zeros(1000, dtype=torch.long)
    runaway = torch.randn(1000, 2, generator=gen) + torch.tensor([40.0, 0.0])
    samples = {'teacher': (teacher.sample(c, gen), c),
               'rtdmd': (sample_tilted(teacher, reward, beta, c, gen), c),
               'runaway': (runaway, c)}
    metrics = {'rtdmd': {'sw2_teacher': 0.25, 'beta_hat': 0.79, 'mean_reward': 1.0}}
    panels = plot_samples(samples, teacher, str(tmp_path / 'samples.png'),
                          tilted=tilted_mixture(teacher, reward, beta), beta=beta,
                          metrics=metrics, reward=reward)
    by_name = {p['name']: p for p in panels}
    assert by_name['teacher']['contours'] == 'teacher'  # exact teacher samples, its density
    assert by_name['rtdmd']['contours'] == by_name['runaway']['contours'] == \
        'tilted teacher, beta=0.8'
    # The runaway model gets a box of its own; the others are not stretched by it.
    assert _inside(runaway, by_name['runaway']['box']) > 0.97
    for name in ('teacher', 'rtdmd'):
        x0, x1, y0, y1 = by_name[name]['box']
        assert x1 - x0 < 10 and x1 - x0 == pytest.approx(y1 - y0)  # square, near the support
        assert _inside(samples[name][0], by_name[name]['box']) > 0.97
    assert 'SW2 teacher 0.25' in by_name['rtdmd']['title']
    assert 'beta_hat 0.79' in by_name['rtdmd']['title']
    assert plt.imread(tmp_path / 'samples.png').std() > 0.01  # something drawn


def test_without_a_closed_form_tilt_every_panel_shows_the_teacher(tmp_path: Path) -> None:
    teacher = GaussianMixtureTeacher([[1.0, 0.0], [-1.0, 0.0]], [0.3, 0.3], [[0.5, 0.5]])
    c = torch.zeros(200, dtype=torch.long)
    x = teacher.sample(c, torch.Generator().manual_seed(1))
    panels = plot_samples({'teacher': (x, c), 'model': (x + 0.1, c)}, teacher,
                          str(tmp_path / 'samples.png'))
    assert [p['contours'] for p in panels] == ['teacher', 'teacher']


def test_panel_title_lists_the_headline_metrics_and_the_share_outside() -> None:
    title = panel_title('dm_only', {'sw2_teacher': 0.1234, 'off_support': math.nan}, 0.2)
    assert title.splitlines()[0] == 'dm_only'
    assert 'SW2 teacher 0.123' in title and 'off-support' not in title  # NaN left out
    assert '20.0% outside view' in title
    assert panel_title('teacher', None, 0.0) == 'teacher'


def test_sweep_limits_do_not_magnify_tiny_differences() -> None:
    low, high = value_limits([0.500, 0.501, 0.502])
    assert high - low >= 0.1 * 0.502 and low < 0.5 and high > 0.502
    low, high = value_limits([0.0, 10.0])  # a real spread is kept, padded
    assert low < 0 and high > 10 and high - low < 12
    assert value_limits([math.nan]) == (0.0, 1.0)
    low, high = value_limits([3.0, math.nan, 3.0])
    assert low < 3.0 < high
