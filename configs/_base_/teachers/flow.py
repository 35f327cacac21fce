# Stage 2 of a shapes teacher: transformer + text encoders by flow matching with CFG dropout on
# the frozen VAE's latents; the EMA weights are written as a diffusers folder at the end.
# Training sigmas: a broad logit-normal without shift. At 32 px the edges and shapes are decided
# at low and middle noise, which SD3's shift of 3 would starve (P(sigma < 0.2) ~ 1 %); the
# schedulers still shift the sampling steps as each release does.
model = dict(family='${family}', type='ShapesFlowTeacher', cfg_dropout=0.1,
             sigma_sampling=dict(mean=0.0, std=1.4, shift=1.0), ema_decay=0.999,
             latent_stats_images=2048, seed=0)
optim_wrapper = dict(type='NonFiniteGuardOptimWrapper',
                     optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01),
                     clip_grad=dict(max_norm=1.0))
# Linear warm-up over the first 140 steps, under a cosine decay to 1 % (plain schedulers: their
# state is tensors and numbers, as the safe checkpoint format requires).
param_scheduler = [
    dict(type='LinearLR', start_factor=0.04, begin=0, end=140, by_epoch=False),
    dict(type='CosineAnnealingLR', eta_min=1e-5, begin=0,
         end='${train_cfg.max_iters}', by_epoch=False),
]
# 6000 steps of 32 images (the leaves set the batch): what 30 minutes on 2 free cores afford with
# OMP_NUM_THREADS=2 (tools/benchmark_shapes_teacher.py prints the cost per stage; 2000 steps left
# the teacher step-limited: it drew a third as many prompts right).
train_cfg = dict(type='IterBasedTrainLoop', max_iters=6000)
custom_hooks = [dict(type='ExportWeightsHook', out_dir='teacher')]
