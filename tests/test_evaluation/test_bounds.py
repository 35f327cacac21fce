"""Documented bounds checked against an evaluation: differences, two-sided bounds, bad specs."""

from __future__ import annotations

import math

from rtdmd.evaluation.bounds import check_bounds, evaluate_bounds, format_bounds

METRICS = {'ac_dmd': {'mean_reward': 0.1, 'sw2_teacher': 0.15},
           'rtdmd': {'mean_reward': 0.6, 'mean_reward_target': 0.75, 'beta_hat': 0.2}}


def test_bounds_compare_columns_and_differences_with_their_limits() -> None:
    rows = evaluate_bounds([
        dict(model='ac_dmd', metric='sw2_teacher', max=0.2),
        dict(model='rtdmd', metric='mean_reward', minus='ac_dmd.mean_reward', min=0.15),
        dict(model='rtdmd', metric='mean_reward', minus='mean_reward_target', min=-0.1, max=0.2),
        dict(model='rtdmd', metric='off_support', max=0.03),  # not measured: not met
    ], METRICS)
    assert [r['met'] for r in rows] == [True, True, False, False]
    assert math.isclose(rows[1]['measured'], 0.5) and math.isclose(rows[2]['measured'], -0.15)
    assert rows[2]['bound'] == 'in [-0.1, 0.2]' and math.isnan(rows[3]['measured'])
    text = format_bounds(rows)
    assert text.endswith("2 of 4 documented bounds missed: ['rtdmd: mean_reward - "
                         "mean_reward_target', 'rtdmd: off_support']")


def test_bad_bound_specs_are_named() -> None:
    errors = check_bounds([dict(model='dm_only', metric='x', max=1),
                           dict(model='rtdmd', metric='x'),
                           dict(model='rtdmd', metric='x', minus='dmd3.y', max=1, typo=1)],
                          ['teacher', 'ac_dmd', 'rtdmd'])
    assert any("evaluation.bounds[0].model: 'dm_only' is not evaluated" in e for e in errors)
    assert 'evaluation.bounds[1]: give min, max or both' in errors
    assert any('evaluation.bounds[2]: unknown keys' in e and 'typo' in e for e in errors)
    assert any('evaluation.bounds[2].minus' in e for e in errors)
