# Stage 2 of a shapes teacher: transformer + text encoders by flow matching with CFG dropout on
# the frozen VAE's latents; the EMA weights are written as a diffusers folder at the end.
# Training sigmas: a broad logit-normal without shift. At 32 px the edges and shapes are decided
# at low and middle noise, which SD3's shift of 3 would starve (P(sigma < 0.2) ~ 1 %); the
# schedulers still shift the sampling steps as each release does.
model = dict(family='${family}', type='ShapesFlowTeacher', cfg_dropout=0.1,
             sigma_sampling=dict(mean=0.0, std=1.4, shift=1.0), ema_decay=0.999,
             latent_stats_images=2048, seed=0)
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01),
                     clip_grad=dict(max_norm=1.0))
# One cycle: linear warm-up over the first 7 % of the run, then cosine decay.
param_scheduler = [dict(type='OneCycleLR', eta_max=1e-3, total_steps='${train_cfg.max_iters}',
                        pct_start=0.07, anneal_strategy='cos', div_factor=25.0,
                        final_div_factor=100.0, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2500)
custom_hooks = [dict(type='ExportWeightsHook', out_dir='teacher')]
