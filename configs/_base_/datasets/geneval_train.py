# Stage-2 (RTDMD) prompts: GenEval prompts with their metadata (tag / include / exclude), which
# the geneval reward needs (ALGORITHM.md 4.3, pitfall 25). batch_size is prompts per process per
# epoch; each prompt is sampled group_size (K) times.
train_dataloader = dict(
    batch_size=2, num_workers=2,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='TextPromptDataset', path='geneval_metadata.jsonl', require_metadata=True),
    collate_fn=dict(type='collate_prompts'),
)
