# The effective beta against the DM weight: python tools/sweep.py configs/ablations/toy2d_beta_dm.py
# Stage 2 (RTDMD from the same stage-1 checkpoint at every point) with the DM weight at x0.5, x1
# and x2 of the toy's 3.0; the GRPO and BP weights stay 1.0 and 0.1. With the reward-weight grid
# (toy2d_beta_weights.py) it tests that only the ratio of the weights sets beta: DM x2 should
# tilt as far as both reward weights x0.5, DM x0.5 as far as both x2.
sweep = dict(
    config='./toy2d_rtdmd_pipeline.py',
    axes=dict(dm=dict(values=[1.5, 3.0, 6.0], keys=['model.matching.dmd_loss.loss_weight'])),
    cfg_options={'evaluation.models': ['teacher', 'ac_dmd', 'rtdmd']},
    metrics=['rtdmd.beta_hat', 'rtdmd.sw2_family', 'rtdmd.mean_reward',
             'rtdmd.mean_reward_target', 'rtdmd.off_support'],
)
