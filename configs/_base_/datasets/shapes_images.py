# Rendered (image, prompt) pairs of the shapes world's training split, drawn on the fly.
# Tags are weighted towards the compositional ones (more prompts, harder); every item is a pure
# function of (seed, index), so resumed runs see the same data.
train_dataloader = dict(
    batch_size=64, num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='collate_prompts'),
    dataset=dict(type='ShapesImageDataset', num_samples=1_000_000, split='train', seed=0,
                 tag_weights=dict(single_object=1, colors=1, two_object=1, color_attr=2,
                                  counting=2, position=3)),
)
