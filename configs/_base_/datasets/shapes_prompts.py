# Prompts of the shapes world's training split with their GenEval metadata (the held-out
# combinations never appear), balanced over the six tags (64 items per tag, cycling through each
# tag's prompts; the split itself is 74 % position prompts). batch_size is prompts per step
# (stage 1) or per epoch, each sampled group_size (K) times (stage 2).
train_dataloader = dict(
    batch_size=8, num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='ShapesPromptDataset', split='train', per_tag=64),
    collate_fn=dict(type='collate_prompts'),
)
