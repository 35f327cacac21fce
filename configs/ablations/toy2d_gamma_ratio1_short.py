# The control of configs/ablations/toy2d_fake_ratio_gamma.py: one fake-score update per generator
# update (ratio 1) for 400 iterations, i.e. the generator updates of the default ratio 5 at 2000,
# against gamma: python tools/sweep.py configs/ablations/toy2d_gamma_ratio1_short.py
sweep = dict(
    config='./toy2d_stage1_pipeline.py',
    axes=dict(gamma=dict(values=[0.0, 0.01, 0.1],
                         keys=['ac_dmd:model.matching.consistency_loss.loss_weight'])),
    cfg_options={'ac_dmd:model.fake_update_ratio': 1, 'ac_dmd:train_cfg.max_iters': 400},
    metrics=['ac_dmd.sw2_teacher', 'ac_dmd.off_support', 'ac_dmd.mode_tv_teacher'],
)
