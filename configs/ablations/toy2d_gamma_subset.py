# Ablation grid on the analytic world: python tools/sweep.py configs/ablations/toy2d_gamma_subset.py
# gamma, the consistency-regulariser weight of the fake score in both stages, against the SubGRPO
# subset size (stochastic steps trained per RL iteration, out of steps 0..2).
sweep = dict(
    config='./toy2d_rtdmd_pipeline.py',
    axes=dict(
        gamma=dict(values=[0.0, 0.01, 0.1],
                   keys=['ac_dmd:model.matching.consistency_loss.loss_weight',  # stage 1
                         'model.matching.consistency_loss.loss_weight']),  # the pipeline's file
        subset=dict(values=[1, 2, 3], keys=['model.subgrpo.num_train_steps'])),
    cfg_options={'evaluation.models': ['teacher', 'ac_dmd', 'rtdmd']},
    metrics=['ac_dmd.sw2_teacher', 'ac_dmd.mode_tv_teacher', 'rtdmd.beta_hat',
             'rtdmd.sw2_family', 'rtdmd.mean_reward', 'rtdmd.off_support'],
)
