# The RTDMD pipeline of the analytic world cut to the two stages the ablation grids vary: stage 1
# AC-DMD, then RTDMD from its checkpoint (a list of stage dicts cannot pass through --cfg-options).
_base_ = ['../rtdmd/toy2d_4step.py']
stages = [
    dict(name='ac_dmd', config='../ac_dmd/toy2d_4step.py'),
    dict(name='rtdmd', init_from='ac_dmd'),
]
