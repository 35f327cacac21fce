# Stage 1, AC-DMD: 4-step CPS generator, sub-interval matching, ambient fake target,
# consistency regulariser (ALGORITHM.md section 3 and 6.2).
model = dict(
    type='ACDMDDistiller',
    backbone='${backbone}',
    sampler=dict(type='CPSSampler', step_list=[1000, 750, 500, 250], eta=0.9),
    # Where and how the generator is matched: on the sub-interval [s, 1] of the last step of a
    # fresh random-stop rollout (add sub_interval=False to match its clean output: DMD2;
    # type='FinalStepMatching': the clean output of a full rollout, no random stop).
    matching=dict(
        type='RandomStopMatching',
        dmd_loss=dict(type='DMDLoss', normalize=True),
        fake_loss=dict(type='AmbientDSMLoss', move_scale_out=True, max_weight=10.0),
        consistency_loss=dict(type='ConsistencyLoss', loss_weight=0.01),
        teacher_guidance=1.0,
        renoise=dict(offset=10.0, end=1000.0, min_step=20.0, max_step=980.0),
        consistency_max_jump=200,
    ),
    fake_update_ratio=10,
)
optim_wrapper = dict(
    constructor='DistillerOptimWrapperConstructor',
    generator=dict(type='NonFiniteGuardOptimWrapper', clip_grad=dict(max_norm=1.0),
                   optimizer=dict(type='AdamW', lr=3e-5, betas=(0.9, 0.999), weight_decay=0.0)),
    fake_score=dict(type='NonFiniteGuardOptimWrapper', clip_grad=dict(max_norm=1.0),
                    optimizer=dict(type='AdamW', lr=3e-5, betas=(0.9, 0.999), weight_decay=0.0)),
)
# One DDP per trainable role when distributed (ignored on a single process).
# mmengine looks wrappers up in its root registry, hence the scope prefix.
model_wrapper_cfg = dict(type='rtdmd.DistillerDataParallel')
custom_hooks = [dict(type='TrainableEMAHook', role='generator', decay=0.99, interval=1)]
