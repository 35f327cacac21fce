# Ablation: distribution matching + GRPO (no reward back-propagation), stage 2 only.
_base_ = ['./toy2d_4step.py']
model = dict(terms=dict(bp=None))
stages = [dict(name='ac_dmd', config='../ac_dmd/toy2d_4step.py'),
          dict(name='dm_grpo', init_from='ac_dmd')]
evaluation = dict(bounds=None)  # the bounds are the full pipeline's (toy2d_4step.py)
