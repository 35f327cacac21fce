# The effective beta against the reward terms' weights: python tools/sweep.py
# configs/ablations/toy2d_beta_weights.py (docs/analytic_world.md, "The effective beta").
# Stage 2 (RTDMD from the same stage-1 checkpoint at every point) with the GRPO weight and the
# reward-BP weight at x0.5, x1 and x2 of the toy's (1.0 and 0.1); the DM weight stays 3.0.
sweep = dict(
    config='./toy2d_rtdmd_pipeline.py',
    axes=dict(
        policy=dict(values=[0.5, 1.0, 2.0], keys=['model.terms.policy.loss_weight']),
        bp=dict(values=[0.05, 0.1, 0.2], keys=['model.terms.bp.loss_weight'])),
    cfg_options={'evaluation.models': ['teacher', 'ac_dmd', 'rtdmd']},
    metrics=['rtdmd.beta_hat', 'rtdmd.sw2_family', 'rtdmd.mean_reward',
             'rtdmd.mean_reward_target', 'rtdmd.off_support'],
)
