# Stage 1 (AC-DMD) of FLUX.2-klein 9B at 512 px: 4-step CPS generator (ALGORITHM.md 3, 6.2). The
# generator starts from the step-distilled klein-9B, teacher and fake score from klein-base-9B.
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/flux2_klein_9b.py',
    '../_base_/algorithms/ac_dmd.py', '../_base_/datasets/pickscore_train.py',
    '../_base_/evaluation/benchmarks.py',
]
# real CFG against the empty prompt (min = max)
model = dict(matching=dict(teacher_guidance=4.0))
# lr 1e-6 for generator and fake score (not the base's 3e-5); EMA 0.99 every step (base).
optim_wrapper = dict(generator=dict(optimizer=dict(lr=1e-6)),
                     fake_score=dict(optimizer=dict(lr=1e-6)))
train_dataloader = dict(batch_size=9)  # per GPU; the release runs 8 GPUs (FSDP full_shard)
# Stage 2 starts from checkpoint 15000 (15 000 fake-score and 1 500 generator steps).
train_cfg = dict(type='IterBasedTrainLoop', max_iters=15000)
default_hooks = dict(checkpoint=dict(interval=5000))
# Sharded over all GPUs (FSDP2 per transformer block, frozen bases too; docs/distributed.md):
# a 9-12 B generator and fake score do not fit each GPU whole, as DDP would hold them. The text
# encoder(s) sharded too (one layer gathered at a time): 1/N of T5-XXL / Qwen3-8B per GPU.
model_wrapper_cfg = dict(_delete_=True, type='rtdmd.DistillerFullyShard',
                         reshard_after_forward=True, param_dtype=None, reduce_dtype='float32',
                         text_encoders='shard')
