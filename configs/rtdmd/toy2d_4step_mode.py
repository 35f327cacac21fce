# The non-differentiable mode reward: RTDMD (DM + GRPO, no back-propagation) vs GRPO-only.
_base_ = ['./toy2d_4step.py']
reward = dict(_delete_=True, type='ModeReward', values=[0.2, 0.9, 0.5, 0.1, 0.7, 0.3, 1.0, 0.4],
              means='${world.means}')
model = dict(terms=dict(bp=None))
stages = [
    dict(name='ac_dmd', config='../ac_dmd/toy2d_4step.py'),
    dict(name='rtdmd', init_from='ac_dmd'),
    dict(name='grpo_only', init_from='ac_dmd', cfg_options={'model.matching': None}),
]
# A piecewise-constant reward tilts mode weights by exp(beta * value): a collapse onto the top
# mode needs a large beta, so the family search reaches further.
evaluation = dict(beta=1.0, beta_grid_max=20.0, bounds=None)  # the linear reward's bounds
