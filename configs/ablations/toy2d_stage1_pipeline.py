# Stage 1 of the analytic world alone (AC-DMD), evaluated against the exact teacher: the
# pipeline of the stage-1 grids (configs/ablations/toy2d_fake_ratio_gamma.py).
_base_ = ['../rtdmd/toy2d_4step.py']
stages = [dict(name='ac_dmd', config='../ac_dmd/toy2d_4step.py')]
evaluation = dict(models=['teacher', 'ac_dmd'], bounds=None)
