# The shapes world's benchmark: `python tools/test.py CONFIG --benchmarks shapes` scores a
# checkpoint (student), the teacher (28 Euler steps, CFG 4) or an exported folder (pipeline) on
# the 96 held-out prompts (16 per GenEval tag) with the programmatic detector (strict and GenEval
# accuracy overall and per tag, the partial score, the clean flag) and the soft reward. The
# fidelity distance is a set statistic, not a per-image score: the pipeline's evaluation
# (evaluation=dict(kind='shapes')) reports it.
benchmark = dict(
    rewards=dict(shapes_geneval=dict(type='ShapesGenEvalReward'),
                 shapes_soft=dict(type='ShapesSoftReward')),
    suites=dict(shapes=dict(prompts='shapes', rewards=['shapes_geneval', 'shapes_soft'])),
    default_suites=['shapes'],
    seeds=[0, 1, 2],
    batch_size=48,
    max_prompts=None,
    teacher=dict(steps=28, guidance_scale=4.0),
)
