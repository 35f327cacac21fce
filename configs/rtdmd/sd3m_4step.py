# RTDMD on SD3-Medium at 1024 px (ALGORITHM.md 4, 6.3). This file is the stage-2 config, and its
# `stages` first run the AC-DMD cold start (configs/ac_dmd/sd3m_4step.py), then stage 2 from that
# stage's final checkpoint. To start from an existing stage-1 checkpoint instead:
#   --cfg-options stages=None model.init_checkpoint=<ac_dmd work dir>/iter_15000.pth
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/sd3m.py',
    '../_base_/algorithms/rtdmd.py', '../_base_/datasets/geneval_train.py',
    '../_base_/rewards/release_train.py', '../_base_/evaluation/benchmarks.py',
]
# K = 16 samples per prompt; teacher CFG 7.0 in the final-step AC-DMD term. Generator AdamW lr
# 3e-6 wd 1e-4, fake score lr 3e-5, DM 1e-3, BP 1e-4 (margin 3), PPO clip 1e-5, consistency on,
# EMA 0.9 every 8 steps: the algorithm base's values.
# Samples per forward of each phase of the 32-sample local batch (2 prompts x 16), what
# tools/plan.py plans at <= 70 GiB per rank on DDP (docs/scale.md); the result does not
# depend on them. Reward back-propagation through the 1024 px decode bounds the generator's.
model = dict(group_size=16, matching=dict(teacher_guidance=7.0),
             rewards='${train_rewards}',  # CLIPScore, HPSv2, PickScore, GenEval
             micro_batch=dict(rollout=16, fake_score=16, generator=4))
optim_wrapper = dict(fake_score=dict(optimizer=dict(lr=3e-5)))
# Prompts per GPU per epoch: 2 x 16 GPUs (FSDP hybrid in the release) = 32 prompts, 512 images.
train_dataloader = dict(batch_size=2)
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1000)  # one iteration = one epoch
default_hooks = dict(checkpoint=dict(interval=100))
stages = [dict(name='ac_dmd', config='../ac_dmd/sd3m_4step.py'),
          dict(name='rtdmd', init_from='ac_dmd')]
