# Class-label prompts of the analytic world; evaluation uses N samples per class.
train_dataloader = dict(
    batch_size=256, num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='ClassPromptDataset', world='${world}', samples_per_class=4096),
)
val_dataloader = dict(
    batch_size=4096, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ClassPromptDataset', world='${world}', samples_per_class=4096),
)
val_evaluator = dict(type='GaussianMixtureMetric', world='${world}', num_projections=256,
                     reference_draws=5)
test_dataloader = val_dataloader
test_evaluator = val_evaluator
