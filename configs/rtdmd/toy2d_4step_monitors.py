# The reward-hacking monitors on the analytic world: RTDMD and GRPO-only from one AC-DMD
# checkpoint (the main job's stages and settings), monitors every 10 epochs (the algorithm
# base's RewardHackingMonitorHook); docs/shapes_world.md shows the traces.
_base_ = ['./toy2d_4step.py']
stages = [dict(name='ac_dmd', config='../ac_dmd/toy2d_4step.py'),
          dict(name='rtdmd', init_from='ac_dmd'),
          dict(name='grpo_only', init_from='ac_dmd',
               cfg_options={'model.matching': None, 'model.terms.bp': None})]
evaluation = dict(bounds=None)  # the bounds are the full pipeline's (toy2d_4step.py)
