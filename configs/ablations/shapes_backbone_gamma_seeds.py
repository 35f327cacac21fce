# The backbone x gamma grid of shapes_backbone_gamma.py over three training seeds:
#   python tools/sweep.py configs/ablations/shapes_backbone_gamma_seeds.py
#   python tools/shapes_table.py work_dirs/ablations/shapes_backbone_gamma_seeds/<point>* ...
# 18 points of the whole shapes pipeline (about 35 minutes on 2 cores with --jobs 2).
sweep = dict(
    config='../rtdmd/shapes_4step.py',
    axes=dict(
        backbone=dict(values=['${backbones.flux2}', '${backbones.sd3}'], keys=['backbone']),
        gamma=dict(values=[0.0, 0.01, 0.1],
                   keys=['ac_dmd:model.matching.consistency_loss.loss_weight',  # stage 1
                         'model.matching.consistency_loss.loss_weight']),  # the pipeline's file
        seed=dict(values=[42, 1, 2], keys=['randomness.seed']),
    ),
    metrics=['ac_dmd.strict', 'ac_dmd.fidelity', 'ac_dmd.clean', 'rtdmd.strict', 'rtdmd.partial',
             'rtdmd.fidelity', 'rtdmd.clean'],
)
