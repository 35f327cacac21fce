# The reward-hacking monitors on the shapes world: RTDMD and GRPO-only (no distribution
# matching, no back-propagation) from one AC-DMD checkpoint, the main example's settings,
# monitors every 5 of the 40 epochs; docs/shapes_world.md shows the traces.
_base_ = ['./shapes_4step.py']
custom_hooks = [dict(type='TrainableEMAHook', role='generator', decay=0.9, interval=8,
                     warmup=True, sub_batches=16),
                dict(type='RewardHackingMonitorHook', interval=5)]
stages = [dict(name='ac_dmd', config='../ac_dmd/shapes_flux2_4step.py'),
          dict(name='rtdmd', init_from='ac_dmd'),
          dict(name='grpo_only', init_from='ac_dmd',
               cfg_options={'model.matching': None, 'model.terms.bp': None})]
# The traces are the result; the three students' held-out scores (18 s; no teacher: that is
# shapes_4step.py's table) say which runs hacked.
evaluation = dict(models=['ac_dmd', 'rtdmd', 'grpo_only'])
