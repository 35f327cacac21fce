# Stage 1 of a shapes teacher: the family's VAE on rendered images (L1 + MSE, tiny KL).
model = dict(family='${family}', type='ShapesVAETrainer', kl_weight=1e-6, seed=0)
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.0),
                     clip_grad=dict(max_norm=1.0))
# One cycle: linear warm-up over the first 5 % of the run, then cosine decay.
param_scheduler = [dict(type='OneCycleLR', eta_max=2e-3, total_steps='${train_cfg.max_iters}',
                        pct_start=0.05, anneal_strategy='cos', div_factor=25.0,
                        final_div_factor=100.0, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1500)
