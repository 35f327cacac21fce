# Does the consistency regulariser help the fake score track the generator when fake updates are
# scarce? python tools/sweep.py configs/ablations/toy2d_fake_ratio_gamma.py
# Stage 1 (AC-DMD, 2000 iterations = 2000 fake-score updates) with one generator update every
# `ratio` fake-score updates (the toy's default 5; 1 = as many generator as fake updates), against
# gamma, the consistency-regulariser weight (0 = off, 0.01 = the release's and the default, 0.1).
sweep = dict(
    config='./toy2d_stage1_pipeline.py',
    axes=dict(
        ratio=dict(values=[1, 2, 5], keys=['ac_dmd:model.fake_update_ratio']),
        gamma=dict(values=[0.0, 0.01, 0.1],
                   keys=['ac_dmd:model.matching.consistency_loss.loss_weight'])),
    metrics=['ac_dmd.sw2_teacher', 'ac_dmd.off_support', 'ac_dmd.mode_tv_teacher'],
)
