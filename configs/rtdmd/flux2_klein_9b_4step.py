# RTDMD on FLUX.2-klein 9B at 512 px (ALGORITHM.md 4, 6.3). This file is the stage-2 config, and its
# `stages` first run the AC-DMD cold start (configs/ac_dmd/flux2_klein_9b_4step.py), then stage 2
# from that stage's final checkpoint. To start from an existing stage-1 checkpoint instead:
#   --cfg-options stages=None model.init_checkpoint=<ac_dmd work dir>/iter_15000.pth
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/flux2_klein_9b.py',
    '../_base_/algorithms/rtdmd.py', '../_base_/datasets/geneval_train.py',
    '../_base_/rewards/release_train.py', '../_base_/evaluation/benchmarks.py',
]
# K = 24 samples per prompt; teacher CFG 4.0 in the final-step AC-DMD term; the fake score's
# consistency regulariser OFF for the 9B. Generator AdamW lr 3e-6 wd 1e-4, DM 1e-3, BP 1e-4
# (margin 3), PPO clip 1e-5, EMA 0.9 every 8 steps: the algorithm base's values.
# Samples per forward of each phase of the 48-sample local batch (2 prompts x 24), what
# tools/plan.py plans at <= 70 GiB per rank under FSDP over the release's 32 GPUs (the model
# does not fit an 80 GB GPU with DDP; docs/scale.md); the result does not depend on them.
model = dict(group_size=24, matching=dict(teacher_guidance=4.0, consistency_loss=None),
             rewards='${train_rewards}',  # CLIPScore, HPSv2, PickScore, GenEval
             micro_batch=dict(rollout=24, fake_score=24, generator=16))
optim_wrapper = dict(fake_score=dict(optimizer=dict(lr=1e-6)))
# Prompts per GPU per epoch: 2 x 32 GPUs (FSDP full_shard in the release) = 64 prompts, 1536 images.
train_dataloader = dict(batch_size=2)
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1000)  # one iteration = one epoch
default_hooks = dict(checkpoint=dict(interval=50))
stages = [dict(name='ac_dmd', config='../ac_dmd/flux2_klein_9b_4step.py'),
          dict(name='rtdmd', init_from='ac_dmd')]
# Sharded over all GPUs (FSDP2 per transformer block, frozen bases too; docs/distributed.md):
# a 9-12 B generator and fake score do not fit each GPU whole, as DDP would hold them. The text
# encoder(s) sharded too (one layer gathered at a time): 1/N of T5-XXL / Qwen3-8B per GPU.
model_wrapper_cfg = dict(_delete_=True, type='rtdmd.DistillerFullyShard',
                         reshard_after_forward=True, param_dtype=None, reduce_dtype='float32',
                         text_encoders='shard')
