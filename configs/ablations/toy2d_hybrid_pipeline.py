# The hybrid gradient on the analytic world: stage 1 AC-DMD, then every combination of the
# stage-2 generator terms from its checkpoint, side by side (docs/analytic_world.md, "The paper's
# claims, measured"): RTDMD (DM + GRPO + BP), DM + GRPO, DM + BP, GRPO only, BP only, DM only.
_base_ = ['../rtdmd/toy2d_4step.py']
stages = [
    dict(name='ac_dmd', config='../ac_dmd/toy2d_4step.py'),
    dict(name='rtdmd', init_from='ac_dmd'),
    dict(name='dm_grpo', init_from='ac_dmd', cfg_options={'model.terms.bp': None}),
    dict(name='dm_bp', init_from='ac_dmd', cfg_options={'model.terms.policy': None}),
    dict(name='grpo_only', init_from='ac_dmd',
         cfg_options={'model.matching': None, 'model.terms.bp': None}),
    dict(name='bp_only', init_from='ac_dmd',
         cfg_options={'model.matching': None, 'model.terms.policy': None}),
    dict(name='dm_only', init_from='ac_dmd',
         cfg_options={'model.terms.policy': None, 'model.terms.bp': None}),
]
evaluation = dict(bounds=None)  # the bounds are the main job's (toy2d_4step.py)
