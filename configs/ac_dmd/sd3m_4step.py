# Stage 1 (AC-DMD) of SD3-Medium at 1024 px: 4-step CPS generator (ALGORITHM.md 3, 6.2).
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/sd3m.py',
    '../_base_/algorithms/ac_dmd.py', '../_base_/datasets/pickscore_train.py',
    '../_base_/evaluation/benchmarks.py',
]
# real CFG against the empty prompt (min = max)
model = dict(matching=dict(teacher_guidance=7.0))
# lr 3e-5 for generator and fake score, EMA 0.99 every step: the algorithm base's values.
train_dataloader = dict(batch_size=9)  # per GPU; the release runs 8 GPUs (FSDP full_shard)
# Stage 2 starts from checkpoint 15000 (15 000 fake-score and 1 500 generator steps).
train_cfg = dict(type='IterBasedTrainLoop', max_iters=15000)
default_hooks = dict(checkpoint=dict(interval=5000))
