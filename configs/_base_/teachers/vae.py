# Stage 1 of a shapes teacher: the family's VAE on rendered images (L1 + MSE, tiny KL).
model = dict(family='${family}', type='ShapesVAETrainer', kl_weight=1e-6, seed=0)
optim_wrapper = dict(type='NonFiniteGuardOptimWrapper',
                     optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.0),
                     clip_grad=dict(max_norm=1.0))
# Linear warm-up over the first 5 % of the default run, under a cosine decay to 1 % (plain
# schedulers: their state is tensors and numbers, as the safe checkpoint format requires).
param_scheduler = [
    dict(type='LinearLR', start_factor=0.04, begin=0, end=50, by_epoch=False),
    dict(type='CosineAnnealingLR', eta_min=2e-5, begin=0,
         end='${train_cfg.max_iters}', by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1000)
