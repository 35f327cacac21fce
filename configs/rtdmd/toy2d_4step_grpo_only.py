# Ablation: GRPO alone (no distribution matching, no back-propagation), stage 2 only.
_base_ = ['./toy2d_4step.py']
model = dict(matching=None, terms=dict(bp=None))
stages = [dict(name='ac_dmd', config='../ac_dmd/toy2d_4step.py'),
          dict(name='grpo_only', init_from='ac_dmd')]
evaluation = dict(bounds=None)  # the bounds are the full pipeline's (toy2d_4step.py)
