# Ablation grid on the shapes world:
#   python tools/sweep.py configs/ablations/shapes_backbone_gamma.py
# The backbone (the FLUX.2-klein-shaped and the SD3-shaped teacher trained here, each the base of
# its own students) against gamma, the consistency-regulariser weight of the fake score in both
# stages. A point is the whole shapes pipeline (stage 1, stage 2, the held-out table).
sweep = dict(
    config='../rtdmd/shapes_4step.py',
    axes=dict(
        backbone=dict(values=['${backbones.flux2}', '${backbones.sd3}'], keys=['backbone']),
        gamma=dict(values=[0.0, 0.01, 0.1],
                   keys=['ac_dmd:model.matching.consistency_loss.loss_weight',  # stage 1
                         'model.matching.consistency_loss.loss_weight']),  # the pipeline's file
    ),
    metrics=['ac_dmd.strict', 'ac_dmd.fidelity', 'ac_dmd.clean', 'rtdmd.strict', 'rtdmd.partial',
             'rtdmd.fidelity', 'rtdmd.clean'],
)
