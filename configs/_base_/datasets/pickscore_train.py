# Stage-1 (AC-DMD) prompts: the release's PickScore train prompts (ALGORITHM.md 6.2, pitfall 25).
# batch_size is per process: the release runs 9 prompts per GPU on 8 GPUs.
train_dataloader = dict(
    batch_size=9, num_workers=2,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='TextPromptDataset', path='pickscore_train.txt'),
    collate_fn=dict(type='collate_prompts'),
)
