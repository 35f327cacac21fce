# Stage 2, RTDMD: distribution matching + hybrid policy gradient (ALGORITHM.md section 4, 6.3).
# `reward` is the fixed interface of the rewarded world; the distiller names it in `rewards`.
model = dict(
    type='RTDMDDistiller',
    backbone='${backbone}',
    sampler=dict(type='CPSSampler', step_list=[1000, 750, 500, 250], eta=0.9),
    rewards=dict(main=dict(scorer='${reward}', weight=1.0)),
    group_size=16,
    # The generator terms, logged as loss_<name>; None switches one off.
    terms=dict(
        policy=dict(type='ClippedRatioLoss', clip_low=1e-5, clip_high=1e-5),  # SubGRPO steps
        bp=dict(type='RewardHingeLoss', margin=3.0, loss_weight=1e-4),  # final step
    ),
    # Distribution matching (loss_dm, weight 1e-3) on the final step of the epoch's rollout,
    # and the fake score's objective; None switches both off.
    matching=dict(
        type='FinalStepMatching',
        dmd_loss=dict(type='DMDLoss', normalize=True, loss_weight=1e-3),
        fake_loss=dict(type='AmbientDSMLoss', move_scale_out=True, max_weight=10.0),
        consistency_loss=dict(type='ConsistencyLoss', loss_weight=0.01),
        teacher_guidance=1.0,
        renoise=dict(offset=10.0, end=1000.0, min_step=20.0, max_step=980.0),
        consistency_max_jump=200,
    ),
    subgrpo=dict(range_start=0, range_end=2, num_train_steps=2),
    advantage_clip=5.0,
    # Samples per forward of each phase (None: the whole local batch, prompts x K); the result
    # does not depend on them. The real-model leaves set what fits an 80 GB GPU (tools/plan.py).
    micro_batch=dict(rollout=None, fake_score=None, generator=None),
    loss_normalization='per_step',  # the release's division by sub-batches x trained steps
    nonfinite_reward='drop',  # a sample with a non-finite reward leaves the advantages (counted)
    fresh_lora_std=1.0,  # stage 2's fresh LoRA: lora_A ~ N(0, 1), lora_B = 0, both networks
)
optim_wrapper = dict(
    constructor='DistillerOptimWrapperConstructor',
    generator=dict(type='NonFiniteGuardOptimWrapper', clip_grad=dict(max_norm=1.0),
                   optimizer=dict(type='AdamW', lr=3e-6, betas=(0.9, 0.999), weight_decay=1e-4)),
    fake_score=dict(type='NonFiniteGuardOptimWrapper', clip_grad=dict(max_norm=1.0),
                    optimizer=dict(type='AdamW', lr=3e-5, betas=(0.9, 0.999), weight_decay=0.0)),
)
# mmengine looks wrappers up in its root registry, hence the scope prefix.
model_wrapper_cfg = dict(type='rtdmd.DistillerDataParallel', find_unused_parameters=True)
# Parameter-level EMA with warm-up decay min((1 + s) / (10 + s), 0.9), every 8 steps, called as
# the release does after each of an epoch's 16 sub-batches (see TrainableEMAHook.sub_batches).
# Reward-hacking monitors every 10 epochs on a fixed probe (drift from the stage-2 start,
# diversity, train vs held-out reward, x0 norm, saturation, brightness): a WARNING past a
# threshold (RewardHackingMonitorHook's conservative defaults; docs/shapes_world.md).
custom_hooks = [dict(type='TrainableEMAHook', role='generator', decay=0.9, interval=8,
                     warmup=True, sub_batches=16),
                dict(type='RewardHackingMonitorHook', interval=10)]
