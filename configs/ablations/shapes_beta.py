# The reward tilt on the shapes world: python tools/sweep.py configs/ablations/shapes_beta.py
# KL(p_theta || p_teacher exp(beta r)) has no explicit beta: the ratio of the reward terms'
# weights to the DM weight sets it (the release weighs its AC-DMD term 0.001 against PPO's 1).
# Stage 2 of the example (RTDMD from the same stage-1 checkpoint at every point: one seed, the
# same stage-1 run) with the DM weight from 1.0 to 0.01 (the example's default); the GRPO
# and BP weights stay 1.0 and 0.1, so beta grows about 3x per point.
sweep = dict(
    config='../rtdmd/shapes_4step.py',
    axes=dict(dm=dict(values=[1.0, 0.3, 0.1, 0.03, 0.01],
                      keys=['model.matching.dmd_loss.loss_weight'])),
    cfg_options={'evaluation.models': ['ac_dmd', 'rtdmd']},
    metrics=[f'{m}.{k}' for m in ('ac_dmd', 'rtdmd')
             for k in ('strict', 'partial', 'soft', 'fidelity', 'clean')],
)
