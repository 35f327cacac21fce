# The backbone x gamma grid of shapes_backbone_gamma.py over three training seeds:
#   python tools/sweep.py configs/ablations/shapes_backbone_gamma_seeds.py
# 18 points of the whole shapes pipeline (about 35 minutes on 2 cores with --jobs 2); pool a
# point's seeds with tools/shapes_table.py on its three work dirs.
_base_ = ['./shapes_backbone_gamma.py']
sweep = dict(axes=dict(seed=dict(values=[42, 1, 2], keys=['randomness.seed'])))
