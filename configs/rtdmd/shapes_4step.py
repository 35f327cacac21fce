# The shapes world end to end (README's second example): stage 1 (AC-DMD, a 4-step generator
# from the shipped FLUX.2-klein-shaped teacher), stage 2 (RTDMD from it: distribution matching
# on the final step + the hybrid policy gradient), then the table on the held-out prompts
# (teacher at 28 Euler steps with CFG and at 4, both students; docs/shapes_world.md).
#
# Rewards: the programmatic detector's GenEval partial score (not differentiable: GRPO only) and
# the soft colour-mass reward (differentiable: GRPO and back-propagation), weighted 1 each, as
# the release puts GenEval next to its differentiable scorers.
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/shapes.py',
    '../_base_/algorithms/rtdmd.py', '../_base_/datasets/shapes_prompts.py',
    '../_base_/evaluation/shapes_benchmarks.py',
]
train_rewards = dict(geneval=dict(scorer=dict(type='ShapesGenEvalReward'), weight=1.0),
                     soft=dict(scorer=dict(type='ShapesSoftReward'), weight=1.0))
# K = 8 samples per prompt, 4 prompts per epoch; teacher CFG 4.0 in the final-step AC-DMD term.
# The DM weight sets the reward tilt beta (its ratio to the reward terms'): 0.01 against GRPO's
# 1.0, near the release's 0.001 against PPO's 1. At 1.0 the DM term holds RTDMD at AC-DMD's
# accuracy or below (configs/ablations/shapes_beta.py; docs/shapes_world.md). Toy-scale rates,
# as the analytic world's stage 2 (the release's 3e-6 is for LoRA on DiTs of billions of
# parameters).
model = dict(group_size=8, rewards='${train_rewards}',
             matching=dict(teacher_guidance=4.0, dmd_loss=dict(loss_weight=0.01)),
             terms=dict(policy=dict(loss_weight=1.0), bp=dict(loss_weight=0.1)))
optim_wrapper = dict(generator=dict(optimizer=dict(lr=2e-4, weight_decay=0.0)),
                     fake_score=dict(optimizer=dict(lr=3e-4)))
train_dataloader = dict(batch_size=4)  # prompts per epoch (x group_size samples)
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40)  # one iteration = one epoch
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=20, max_keep_ckpts=1))
stages = [dict(name='ac_dmd', config='../ac_dmd/shapes_flux2_4step.py'),
          dict(name='rtdmd', init_from='ac_dmd')]
# The held-out prompts (16 per tag), 2 seeds; the teacher at 28 and 4 Euler steps with CFG 4.
evaluation = dict(kind='shapes', models=['teacher', 'ac_dmd', 'rtdmd'], per_tag=16,
                  seeds=[0, 1],
                  teacher=[dict(steps=28, guidance_scale=4.0), dict(steps=4, guidance_scale=4.0)])
