# Stage 1 (AC-DMD) on the analytic world: 4-step CPS generator distilled from the exact teacher.
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/toy2d.py',
    '../_base_/algorithms/ac_dmd.py', '../_base_/datasets/toy_classes.py',
    '../_base_/schedules/toy_2k.py',
]
model = dict(fake_update_ratio=5)
optim_wrapper = dict(generator=dict(optimizer=dict(lr=1e-3)),
                     fake_score=dict(optimizer=dict(lr=1e-3)))
default_hooks = dict(logger=dict(interval=100), checkpoint=dict(interval=1000))
