# Plain DMD2 baseline: no sub-interval matching, no consistency regulariser.
_base_ = ['./toy2d_4step.py']
model = dict(matching=dict(sub_interval=False, consistency_loss=None))
