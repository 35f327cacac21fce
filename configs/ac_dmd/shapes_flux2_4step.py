# Stage 1 (AC-DMD) on the shapes world: a 4-step CPS generator (LoRA) distilled from the shipped
# FLUX.2-klein-shaped teacher (ALGORITHM.md 3, 6.2), real CFG 4.0 against the empty prompt as
# for klein-4B. Toy-scale rates (the release's 1e-6 is for LoRA on a 4B DiT), a fake-score ratio
# of 3 (100 generator steps in 300 iterations); EMA 0.99 every step (the base).
_base_ = [
    '../_base_/default_runtime.py', '../_base_/models/shapes.py',
    '../_base_/algorithms/ac_dmd.py', '../_base_/datasets/shapes_prompts.py',
    '../_base_/evaluation/shapes_benchmarks.py',
]
model = dict(matching=dict(teacher_guidance=4.0), fake_update_ratio=3)
optim_wrapper = dict(generator=dict(optimizer=dict(lr=3e-4)),
                     fake_score=dict(optimizer=dict(lr=3e-4)))
train_dataloader = dict(batch_size=8)
train_cfg = dict(type='IterBasedTrainLoop', max_iters=300)
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=150, max_keep_ckpts=1))
