# The shapes world's full table (docs/shapes_world.md): the teacher at 28 and 4 Euler steps with
# CFG, the 4-step AC-DMD and DMD2 students (stage 1), RTDMD and GRPO-only (no distribution
# matching, no back-propagation) from AC-DMD (stage 2), on the held-out prompts.
# Three training seeds: python tools/sweep.py configs/ablations/shapes_seeds.py
_base_ = ['./shapes_4step.py']
stages = [
    dict(name='ac_dmd', config='../ac_dmd/shapes_flux2_4step.py'),
    dict(name='dmd2', config='../ac_dmd/shapes_flux2_4step.py',  # plain DMD2, as the toy's
         cfg_options={'model.matching.sub_interval': False,
                      'model.matching.consistency_loss': None}),
    dict(name='rtdmd', init_from='ac_dmd'),
    dict(name='grpo_only', init_from='ac_dmd',
         cfg_options={'model.matching': None, 'model.terms.bp': None}),
]
evaluation = dict(models=['teacher', 'ac_dmd', 'dmd2', 'rtdmd', 'grpo_only'])
